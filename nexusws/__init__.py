"""nexusws: a WebSocket gateway and remote-session launcher built on Twisted and Autobahn.

The package owns everything of the gateway; its modules stand in layers, and
a module may import only from its own layer or the ones below it (checked by
tests/test_architecture.py; docs/architecture.rst draws it):

  5  balancer/   the balancer over several gateways (its own twistd plugin)
  4  assembly    tap (options), assemble (makeService), gateway (listeners,
                 start-up, shutdown), cli (console script), services (the
                 public import path of the script API, imported by nothing here)
  3  tunnel      routing, handshake, closing, bridge: a WebSocket to a TCP backend
     http        responses, ranges, files, web, viewer, controls, streams, portal, api: the
                 HTTP tree and /v1 (controls: a session's snapshot, touch, extend; streams: its
                 events; portal: the calls of the session portal and the admin dashboard)
  2  sessions/   a session's life, reservation to the last process ended
  1  access      groups, limits, sites, auth, admission: who may do what, how much
  0  foundation  errors, convert, scrub, logs, clock, internals, answers, addresses,
                 cmdline, credentials, tls, load, metrics, status_page, pipes, activity
                 (which client bytes of a VNC tunnel are user input)

May import: the standard library, Twisted, Autobahn, txaio, zope.interface,
pyOpenSSL, cryptography and service-identity (TLS), prometheus_client;
nothing from the tests.
"""

__version__ = "0.1.0"
