"""makeService's helpers: each builds one part; build_service only assembles.

Everything is built with the reactor given (a test passes a memory reactor and
no global reactor is touched). Nothing here listens or logs: the options were
checked by L{nexusws.tap.Options} (which builds nothing), and everything that
happens at start-up happens in L{nexusws.gateway}. Building runs the service
scripts' C{__init__}, reads a groups file again and creates the default state
file's directory, nothing more.
"""

import os

from nexusws import tls
from nexusws.admission import TOO_MANY, ConnectionCap
from nexusws.api import ApiRoot
from nexusws.auth import TrustedProxies, access_from_options, access_notes
from nexusws.bridge import BridgeFactory
from nexusws.errors import StartupError
from nexusws.gateway import (
    GatewayService,
    ListenerService,
    TunnelsService,
    is_tls_endpoint,
    parse_endpoint,
)
from nexusws.load import NodeLoad, listener_url
from nexusws.metrics import Metrics
from nexusws.routing import FixedRouter, NoRouter, Target, TokenRouter
from nexusws.sessions import procs
from nexusws.sessions.config import build_services
from nexusws.sessions.deadlines import LIMITS
from nexusws.sessions.keeper import SessionsService
from nexusws.sessions.launcher import Launcher
from nexusws.sessions.registry import Registry
from nexusws.sessions.reservation import LIVE
from nexusws.sessions.slurmsite import POLL_INTERVAL, SlurmSite, job_name
from nexusws.sessions.statefile import StateFile
from nexusws.viewer import viewer_resource
from nexusws.web import make_site


def make_router(options, registry, notes, access=None):
    """Basic mode (--client_port), behind the token router when there are sessions."""
    if options["client_port"] is not None:
        router = FixedRouter(Target(options["client_hostname"], options["client_port"]))
    else:
        router = NoRouter()
        if registry is None:
            notes.append("no --client_port and no services: every WebSocket will be refused")
    return router if registry is None else TokenRouter(registry, router, access)


def make_bridge(options, reactor, registry, notes, access=None):
    factory = BridgeFactory(
        make_router(options, registry, notes, access),
        reactor,
        connect_timeout=options["connect_timeout"],
        close_timeout=options["close_timeout"],
        ping_interval=options["ping_interval"],
        ping_timeout=options["ping_timeout"],
        # Limits and origins (nexusws.limits).
        handshake_timeout=options["handshake_timeout"],
        max_frame_size=options["max_frame_size"],
        max_message_size=options["max_message_size"],
        max_request_size=options["http_max_header_size"],
        max_tunnels=options["max_tunnels"],
        max_tunnels_per_address=options["max_tunnels_per_address"],
        allowed_origins=options.get("allowed_origin", ()),
    )
    hard = procs.open_files_hard_limit()
    if options["max_tunnels"] and hard is not None and 2 * options["max_tunnels"] + 64 > hard:
        notes.append(f"--max_tunnels {options['max_tunnels']} needs about {2 * options['max_tunnels'] + 64} "
                     f"open files and the limit is {hard}: raise it (ulimit -Hn, LimitNOFILE= under "
                     "systemd) or lower --max_tunnels")
    if access is not None:  # tunnels per address: the client behind nginx
        factory.client_address = access.client
    return factory


def make_sessions(options, reactor, notes, metrics=None):
    """The registry and its service, or (None, None) when no service is configured.

    The services checked by the options (L{nexusws.sessions.config.ServiceSpec}s)
    are built here, with C{reactor} and one launcher: their scripts' objects are
    created now.

    @raise StartupError: a script's C{__init__} raised, or the default state file's
        directory cannot be created (made here, not by the options: a failed start
        leaves nothing behind)."""
    if not options["services"]:
        return None, None
    if options["http_directory"] is None:
        notes.append("services are configured but there is no --http_directory: without "
                     "the /v1 API nothing can reserve them")
    # Kept sessions outlive our pipes: their output is relayed by their supervisors,
    # which drop it once we are gone (nexusws.sessions.supervisor).
    launcher = Launcher(reactor, relay_output=bool(options["keep_sessions"]))
    slurm = make_slurm_site(options, reactor)
    if slurm is not None and metrics is not None:
        metrics.watch_slurm(slurm)
    services = build_services(options["services"], reactor, launcher, slurm_site=slurm)
    if options.get("state_file_is_default"):
        try:
            os.makedirs(os.path.dirname(options["state_file"]), mode=0o700, exist_ok=True)
        except OSError as e:
            raise StartupError(f"--state_file: cannot create the default directory for "
                               f"{options['state_file']!r}: {e.strerror}") from None
    registry = Registry(
        services, reactor, timeout=options["timeout"],
        start_timeout=options["start_timeout"], metrics=metrics,
        reconnect_grace=options["reconnect_grace"], limits={name: options[name] for name in LIMITS},
        keep_sessions=bool(options["keep_sessions"]),
    )
    if options["keep_sessions"]:
        ungraced = [s.name for s in services if registry.grace_of(s) <= 0]
        if ungraced:
            notes.append(f"--keep_sessions with a reconnect_grace of 0 for {', '.join(map(repr, ungraced))}: "
                         f"their sessions kept at a stop end as soon as the next start adopts them")
    sessions = SessionsService(registry, StateFile(options["state_file"]), reactor, launchers=[launcher],
                               slurm=slurm)
    registry.on_change = sessions.save  # every change recorded in the state file before it counts
    return registry, sessions


def make_slurm_site(options, reactor):
    """The Slurm services' shared site (L{nexusws.sessions.slurmsite}), or None without any:
    its job name from this host and the state file, its squeue every C{poll_interval} (their least)."""
    specs = [spec for spec in options["services"] if spec.slurm]
    if not specs:
        return None
    interval = min(float(spec.options.get("poll_interval", POLL_INTERVAL)) for spec in specs)
    return SlurmSite(reactor, job_name(options["state_file"]), interval=interval)


def make_connection_cap(options, label, reactor):
    """C{label}'s --max_connections_per_address cap (L{nexusws.admission}), or None.

    The trusted proxies are exempt, the default trust (loopback) included: a
    front proxy's connections carry all its users (nginx on this host is the
    usual deployment, and a cap on it would be a cap on everyone)."""
    limit = options["max_connections_per_address"]
    if not limit:
        return None
    proxies = options.get("trusted_proxy")  # None: not given (loopback); []: --trusted_proxy none
    exempt = TrustedProxies() if proxies is None else TrustedProxies(proxies) if proxies else None
    return ConnectionCap(label, limit, reactor, exempt=exempt)


def make_listener(label, description, factory, reactor, tls_options, scheme, cap=None):
    """A L{ListenerService} for C{factory}, over TLS with C{tls_options} if given,
    under the connection C{cap} (a L{ConnectionCap}) if given."""
    endpoint = parse_endpoint(reactor, label, description)
    if tls_options is not None:
        factory = tls.wrap(factory, tls_options)
    over_tls = tls_options is not None or is_tls_endpoint(description)
    if cap is not None:
        # Outside the TLS wrapper (an ssl: endpoint wraps inside, out of reach):
        # either way one count per TCP connection; a refusal over TLS is a bare
        # close, as a 429 would first cost a TLS handshake.
        factory = cap.wrap(factory, answer=None if over_tls else TOO_MANY)
    if over_tls:
        scheme += "s"
    return ListenerService(label, description, endpoint, factory, scheme)


class AdvertisedURL:
    """The ws(s):// URL clients connect to, for /v1/load: --advertise_url, else the
    ws listener's URL, worked out once it listens (a name lookup: once only)."""

    def __init__(self, options, listener):
        self.options, self.listener = options, listener
        self.worked_out, self.url = False, None

    def __call__(self):
        if self.options.get("advertise_url"):
            return self.options["advertise_url"]
        if not self.worked_out and self.listener.port is not None:
            self.worked_out, self.url = True, listener_url(self.listener.port, self.listener.scheme)
        return self.url


def websocket_place(options, listener):
    """C{()} -> where pages here reach the ws listener (L{nexusws.portal.services}):
    --advertise_url, else its port (None on a UNIX socket) and whether it is wss."""
    def place():
        host = None if listener.port is None else listener.port.getHost()
        return {"url": options.get("advertise_url") or None, "port": getattr(host, "port", None),
                "secure": listener.scheme == "wss"}
    return place


def build_service(options, reactor):
    """The gateway's service tree for parsed L{nexusws.tap.Options}, on C{reactor}.

    @raise StartupError: a service script's C{__init__} raised, or the groups file
        became unreadable since the options were checked."""
    access = access_from_options(options, reactor)
    notes = []
    metrics = Metrics()
    registry, sessions = make_sessions(options, reactor, notes, metrics)
    bridge = make_bridge(options, reactor, registry, notes, access)
    metrics.watch_tunnels(bridge)
    if registry is not None:
        metrics.watch_sessions(registry, LIVE)
    listeners = [make_listener("--ws_listen", options["ws_listen"], bridge, reactor, options["tls"], "ws",
                               cap=make_connection_cap(options, "--ws_listen", reactor))]

    node_load = NodeLoad(registry, bridge, options["max_tunnels"], ws_url=AdvertisedURL(options, listeners[0]))
    if options["http_directory"] is not None:
        api = ApiRoot(options["security_token"], registry=registry, stop=reactor.stop, reactor=reactor,
                      access=access, metrics=metrics, load=node_load)
        api.max_reservations_per_user = options["max_reservations_per_user"]  # nexusws.limits
        api.websocket = websocket_place(options, listeners[0])
        site = make_site(options["http_directory"], api, reactor,  # limits and HSTS: nexusws.web
                         viewer=viewer_resource(options["novnc_dir"]), allow_dotfiles=options["http_allow_dotfiles"],
                         max_header_size=options["http_max_header_size"],
                         idle_timeout=options["http_idle_timeout"], hsts_max_age=options["hsts_max_age"])
        listeners.append(
            make_listener("--http_listen", options["http_listen"], site, reactor, options["tls"], "http",
                          cap=make_connection_cap(options, "--http_listen", reactor))
        )
    elif {"http_port", "http_listen"} & options.given:
        notes.append("--http_port/--http_listen given without --http_directory: no HTTP server (as documented)")
    http = options["http_listen"] if options["http_directory"] is not None else None
    notes += access_notes(access, options["services"], http, options["security_token"])  # warnings

    top = GatewayService(
        verbose=options["verbose"], log_file=options["log_file"], notes=notes, reactor=reactor
    )
    # Children stop in reverse order: the listeners close first, then the open
    # tunnels get their 1001, then (first child) the sessions stop.
    if sessions is not None:
        sessions.setServiceParent(top)
    TunnelsService(bridge, reactor, grace=options["close_timeout"] + 5).setServiceParent(top)
    for listener in listeners:
        listener.setServiceParent(top)
    return top

