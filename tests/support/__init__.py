"""Helpers shared by the test modules, so that no test module imports another.

Imported as C{support.<module>} (tests/ is on sys.path). Nothing here is named
C{test_*}, so pytest collects nothing from this package.

- L{support.bridge}: the in-memory bridge harness (client, gateway, backend on iosim pumps).
- L{support.pipes}: the C{pair} fixture: a Twisted TCP transport over a loopback socket.
- L{support.data_path}: C{@both_paths}, a test run on the fast data path and on the public-API fallback.
- L{support.http}: parsing raw HTTP answers; the in-memory client address.
- L{support.api}: the in-memory /v1 API harness over a Registry of fake services.
- L{support.reservations}: the in-memory reservation registry harness.
- L{support.deferreds}: C{result_of}, the result of a fired Deferred.
- L{support.events}: C{events_of}, the log events a call publishes.
- L{support.waiting}: C{wait_until}, polling real processes with a deadline.
- L{support.tls}: fresh self-signed certificates.
- L{support.raw_http}: raw bytes to a real listener and the status of the answer.
- L{support.tunnels}: real gateway processes and real clients: arguments, scenarios, memory.
- L{support.cluster}: real gateway nodes and a real balancer process.
"""
