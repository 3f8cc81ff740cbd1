"""The session balancer: several nexusws nodes behind one address (Webots session server role).

  config  the balancer's JSON config file
  nodes   the nodes: polled /v1/load and /v1/status, availability, events
  mail    mail to the administrators when a node goes down or comes back
  web     its HTTP and WebSocket endpoints, and its /v1 (reservations forwarded)
  tap     its options and makeService (twistd nexusws-balancer)

May import: the standard library, Twisted, Autobahn, and nexusws's foundation
(errors, convert, logs, clock, answers) and assembly (gateway's listener and
service classes, web's access log). Nothing in nexusws imports the balancer.
"""
