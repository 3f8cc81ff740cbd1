"""makeService's helpers: each builds one part; build_service only assembles.

Nothing here does I/O or logs: the options were checked by L{nexusws.tap.Options}
and everything that happens at start-up happens in L{nexusws.service}.
"""

from nexusws import tls
from nexusws.api import ApiRoot
from nexusws.bridge import BridgeFactory
from nexusws.routing import FixedRouter, NoRouter, Target
from nexusws.service import (
    GatewayService,
    ListenerService,
    TunnelsService,
    is_tls_endpoint,
    parse_endpoint,
)
from nexusws.web import make_site


def make_router(options, notes):
    if options["client_port"] is not None:
        return FixedRouter(Target(options["client_hostname"], options["client_port"]))
    notes.append("no --client_port: every WebSocket will be refused (no backend configured)")
    return NoRouter()


def make_bridge(options, reactor, notes):
    return BridgeFactory(
        make_router(options, notes),
        reactor,
        connect_timeout=options["connect_timeout"],
        close_timeout=options["close_timeout"],
        ping_interval=options["ping_interval"],
        ping_timeout=options["ping_timeout"],
    )


def make_listener(label, description, factory, reactor, tls_options, scheme):
    """A L{ListenerService} for C{factory}, over TLS with C{tls_options} if given."""
    endpoint = parse_endpoint(reactor, label, description)
    if tls_options is not None:
        factory = tls.wrap(factory, tls_options)
    if tls_options is not None or is_tls_endpoint(description):
        scheme += "s"
    return ListenerService(label, description, endpoint, factory, scheme)


def build_service(options, reactor=None):
    """The gateway's service tree for parsed L{nexusws.tap.Options}."""
    if reactor is None:
        from twisted.internet import reactor
    notes = []
    bridge = make_bridge(options, reactor, notes)
    listeners = [make_listener("--ws_listen", options["ws_listen"], bridge, reactor, options["tls"], "ws")]
    if options["http_directory"] is not None:
        site = make_site(options["http_directory"], ApiRoot(options["security_token"]))
        listeners.append(
            make_listener("--http_listen", options["http_listen"], site, reactor, options["tls"], "http")
        )
    elif {"http_port", "http_listen"} & options.given:
        notes.append("--http_port/--http_listen given without --http_directory: no HTTP server (as documented)")

    top = GatewayService(
        verbose=options["verbose"], log_file=options["log_file"], notes=notes, reactor=reactor
    )
    # First child, so stopped last: the listeners close, then the open tunnels get their 1001.
    TunnelsService(bridge, reactor, grace=options["close_timeout"] + 5).setServiceParent(top)
    for listener in listeners:
        listener.setServiceParent(top)
    return top
