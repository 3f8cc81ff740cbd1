"""Helpers shared by the test modules, so that no test module imports another.

Imported as C{support.<module>} (tests/ is on sys.path). Nothing here is named
C{test_*}, so pytest collects nothing from this package. Programs the tests run
stay beside them: tests/programs/, tests/crash/, tests/services/, and the session
scripts of tests/sessions/ (named by its services.json).

In memory (fake transports, memory reactors, a Clock):

- L{support.bridge}: the in-memory bridge harness (client, gateway, backend on iosim pumps).
- L{support.pipes}: the C{pair} fixture: a Twisted TCP transport over a loopback socket.
- L{support.data_path}: C{@both_paths}, a test run on the fast data path and on the public-API fallback.
- L{support.http}: parsing raw HTTP answers; the in-memory client address.
- L{support.api}: the in-memory /v1 API harness over a Registry of fake services.
- L{support.access_api}: the in-memory /v1 API with access rules, asked from any peer as any user.
- L{support.reservations}: the in-memory reservation registry harness.
- L{support.services}: services built as makeService builds them, from a config file or built-in specs.
- L{support.options}: C{parse}, the L{nexusws.tap.Options} of a command line.
- L{support.deferreds}: C{result_of} and C{failure_of}, what a fired Deferred holds.
- L{support.events}: C{events_of}, the log events a call publishes.

Real processes and sockets:

- L{support.waiting}: C{wait_until}, polling real processes with a deadline; also
  C{poke_until_logged} (use the gateway until it logs a change), and on an asyncio
  loop C{wait_until_async} and C{wait_steady} (until a transfer stops moving).
- L{support.proc_sockets}: C{accepted_peers}, the TCP connections a process has
  accepted and not closed (from /proc).
- L{support.tls}: fresh self-signed certificates.
- L{support.raw_http}: raw bytes to a real listener and the status of the answer.
- L{support.tcp_peers}: real asyncio TCP backends on loopback (C{Backend}) and a closed port.
- L{support.tunnels}: real gateway processes and real clients: arguments, scenarios, memory.
- L{support.sessions}: real gateways with real session processes (tests/sessions/services.json):
  their arguments, the /v1 calls, the marked processes in /proc, WebSocket clients.
- L{support.cluster}: real gateway nodes and a real balancer process.
- L{support.smtp_server}: a real SMTP server on loopback (STARTTLS, login) that keeps what it receives.
- L{support.nginx_front}: a real nginx in front of nexusws, with the shipped config/nginx/ files.
- L{support.nginx_pages}: the pages (portal, dashboard, viewer) in Chromium through nginx at a path prefix.
- L{support.portal}: the portal, the dashboard and the test page in Chromium against a real gateway.
- L{support.shipped_units}: the shipped systemd units, read and run under socket activation.
- L{support.desktop}: a real VNC desktop (Xvfb painted one colour, x11vnc); the Xvfb of a display.
- L{support.envision}: EnVision's stand-in as the built-in service runs it: executable, free ports, desktops.
"""
