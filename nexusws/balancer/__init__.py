"""The session balancer: several nexusws nodes behind one address (Webots session server role)."""
