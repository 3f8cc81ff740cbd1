"""nexusws: a WebSocket gateway and remote-session launcher built on Twisted and Autobahn."""

__version__ = "0.1.0"
