"""The command line (seed-compatible with the Nexus websocketserver) and makeService.

C{twistd -n nexusws [options] ws_server_port} and C{nexus-websocketserver
[options] ws_server_port} share L{Options}: every value is checked here, so a
mistake stops start-up with one line before anything listens.
"""

import os
import sys
import types

from twisted.python import runtime, usage

from nexusws import __version__, admission, credentials, limits, load, tls, viewer, web
from nexusws.auth import AccessOptions
from nexusws.cmdline import ReferenceStyleOptions
from nexusws.convert import _coerced, _level, _local_session, _port, _positive_seconds, _seconds
from nexusws.credentials import SECURITY_TOKEN_ENV
from nexusws.errors import TWISTD_PROG, StartupError, say
from nexusws.gateway import is_tls_endpoint, parse_endpoint
from nexusws.sessions import timeouts
from nexusws.sessions.builtin import EXECUTABLE_ENV, builtin_specs
from nexusws.sessions.config import check_names, read_config
from nexusws.sessions.deadlines import LIMITS

#: What option checks that need a clock get: the wall clock, not a reactor.
WALL_CLOCK = types.SimpleNamespace(seconds=runtime.seconds)


class Options(AccessOptions, ReferenceStyleOptions):
    """Options of C{twistd nexusws} and C{nexus-websocketserver}.

    Beyond Twisted's usage rules, as the reference's argparse allows: names
    keep the reference's underscores and also take hyphens (C{--http-port});
    a unique prefix abbreviates a name (C{--http_dir}); options may follow
    the positional port; C{--local_session} takes two words
    (C{--local_session envision 4}) and may be repeated.
    """

    synopsis = "[options] ws_server_port"
    longdesc = (
        "Nexus websocket proxy server: tunnels WebSocket (ws/wss) connections to a TCP "
        "service and serves files over HTTP."
    )

    optParameters = [
        ["http_directory", None, None,
         "Directory to serve up files from via http. It enables HTTP services."],
        ["http_port", None, 9090, "Port to support http file serving on.", _coerced(_port, "http_port")],
        ["cert", None, None, "Filename of the ssl certificate (PEM, may hold the chain and key)."],
        ["key", None, None, "Filename of the ssl key (PEM, unencrypted)."],
        ["security_token", None, None,
         f"REST API security token. Default: {SECURITY_TOKEN_ENV} environmental variable value"],
        ["security_token_file", None, None,
         "File holding the REST API security token, read once at start-up (with systemd: "
         "LoadCredential=token:FILE and --security_token_file ${CREDENTIALS_DIRECTORY}/token)."],
        ["remote_session_config", None, None, "Name of the remote session configuration file."],
        ["client_hostname", None, None,
         "Hostname of the socket to serve using the websocket protocol on ws_server_port "
         "(default: localhost when --client_port is given)."],
        ["client_port", None, None,
         "Port number of the socket to serve using the websocket protocol on ws_server_port.",
         _coerced(_port, "client_port")],
        ["timeout", None, int(timeouts.RESERVATION_TIMEOUT),
         "Number of seconds before an unused reservation is reclaimed.",
         _coerced(_positive_seconds, "timeout")],
        ["local_session", None, None,
         "'appname count': built-in sessions, appname ensight or envision; repeatable."],
        ["verbose", None, 0,
         "Verbosity: 0 start-up, tunnels and HTTP access; 1 adds debugging; 2 adds Autobahn's.",
         _coerced(_level, "verbose")],
        ["log_file", None, None,
         "Save program output to the named log file instead of stdout (under twistd: "
         "in addition to twistd's log)."],
        ["ws_listen", None, None,
         "Twisted endpoint string for the WebSocket listener, instead of ws_server_port "
         "(e.g. tcp:9090:interface=127.0.0.1, systemd:domain=INET:name=ws)."],
        ["http_listen", None, None,
         "Twisted endpoint string for the HTTP listener, instead of --http_port."],
        ["connect_timeout", None, 10.0,
         "Seconds to wait for the backend TCP connection.", _coerced(_positive_seconds, "connect_timeout")],
        ["close_timeout", None, 30.0,
         "Seconds a closing tunnel may take to hand over its remaining data.",
         _coerced(_seconds, "close_timeout")],
        ["ping_interval", None, 0.0,
         "Send a WebSocket ping every this many seconds (0: no keep-alive).",
         _coerced(_seconds, "ping_interval")],
        ["ping_timeout", None, None,
         "Drop a client that has not answered a ping within this many seconds "
         "(default: the ping interval).", _coerced(_seconds, "ping_timeout")],
        ["state_file", None, None,
         "The session state file (default: $STATE_DIRECTORY/nexusws-state.json under systemd, "
         "else ~/.local/state/nexusws/<ws listener>.json); used when services are configured."],
        ["start_timeout", None, timeouts.START_TIMEOUT,
         "Seconds a session instance may take to start and accept connections.",
         _coerced(_positive_seconds, "start_timeout")],
        ["reconnect_grace", None, timeouts.RECONNECT_GRACE,
         "Seconds a session is kept after its WebSocket is lost, for the same token to "
         "re-attach (0: stop at once); a service's options.reconnect_grace overrides it.",
         _coerced(_seconds, "reconnect_grace")],
        ["idle_timeout", None, LIMITS["idle_timeout"],
         "Seconds without user input (keys, pointer, clipboard; any byte for a non-VNC "
         "session) that end a session (0: never); a service's options.idle_timeout overrides it.",
         _coerced(_seconds, "idle_timeout")],
        ["idle_warning", None, LIMITS["idle_warning"],
         "The page is warned this many seconds before an idle session ends (at most half "
         "the idle timeout).", _coerced(_seconds, "idle_warning")],
        ["max_duration", None, LIMITS["max_duration"],
         "Seconds from its start that end a session (0: never); /v1/extend moves it.",
         _coerced(_seconds, "max_duration")],
        ["time_warning", None, LIMITS["time_warning"],
         "The page is warned this many seconds before a session's time limit (at most half "
         "of it).", _coerced(_seconds, "time_warning")],
        ["max_extend", None, LIMITS["max_extend"],
         "Seconds /v1/extend may add to a session's time limit in all (0: no extension).",
         _coerced(_seconds, "max_extend")],
        ["ensight_executable", None, None,
         "The EnSight program for --local_session ensight (default: $NEXUSWS_ENSIGHT, else "
         "'ensight' on PATH)."],
        ["vnc_port_base", None, 5900,
         "VNC port of the built-in sessions: ensight i uses base+2i, envision i base+2i+1.",
         _coerced(_port, "vnc_port_base")],
        ["envision_executable", None, None,
         "The EnVision program for --local_session envision (default: $NEXUSWS_ENVISION, "
         "else 'envision' on PATH)."],
    ]

    # Limits and origins (nexusws.limits); also opt_allowed_origin.
    optParameters += [
        ["handshake_timeout", None, limits.HANDSHAKE_TIMEOUT,
         "Seconds a client has to send its whole WebSocket request (0: no limit).",
         _coerced(_seconds, "handshake_timeout")],
        ["max_frame_size", None, limits.MAX_FRAME_SIZE,
         "Largest WebSocket frame a client may send, bytes (64K, 16M...; 0: no limit); "
         "close 1009 beyond.", _coerced(limits.parse_size, "max_frame_size")],
        ["max_message_size", None, limits.MAX_MESSAGE_SIZE,
         "Largest WebSocket message a client may send, bytes (0: no limit); close 1009 beyond.",
         _coerced(limits.parse_size, "max_message_size")],
        ["max_tunnels", None, limits.MAX_TUNNELS,
         "Most tunnels open at once (0: no limit); beyond, handshakes get 503.",
         _coerced(limits.parse_count, "max_tunnels")],
        ["max_tunnels_per_address", None, limits.MAX_TUNNELS_PER_ADDRESS,
         "Most tunnels open at once from one client address (0: no limit); beyond, 429.",
         _coerced(limits.parse_count, "max_tunnels_per_address")],
        ["max_connections_per_address", None, admission.MAX_CONNECTIONS_PER_ADDRESS,
         "Most TCP connections open at once from one address, on each listener, in any state "
         "(0: no limit); beyond, closed at once (429 on plain listeners). Trusted proxies "
         "(--trusted_proxy, default loopback) are exempt.", _coerced(limits.parse_count, "max_connections_per_address")],
        ["max_reservations_per_user", None, limits.MAX_RESERVATIONS_PER_USER,
         "Most outstanding reservations of one user (anonymous: one address) (0: no limit); "
         "beyond, /v1/reserve answers 429.", _coerced(limits.parse_count, "max_reservations_per_user")],
    ]

    # Several nodes (nexusws.load): what a balancer is told.
    optParameters += [
        ["advertise_url", None, None,
         "The ws:// or wss:// URL clients reach this node's WebSocket port at, as /v1/load "
         "tells a balancer (default: from --ws_listen: its address, or this host's name).",
         _coerced(load.check_ws_url, "advertise_url")],
    ]

    # TLS (nexusws.tls; the files are loaded in _check_tls) and HTTP limits (nexusws.web).
    optParameters += [
        ["cert_chain", None, None, "PEM intermediate certificates, after any chain in --cert."],
        ["tls_min_version", None, "1.2", "Oldest TLS version accepted: 1.2 or 1.3.",
         _coerced(tls.parse_min_version, "tls_min_version")],
        ["tls_ciphers", None, None, "OpenSSL cipher string for TLS 1.2 (default: Twisted's)."],
        ["client_ca", None, None, "PEM CA certificates: clients must present a certificate they signed."],
        ["hsts_max_age", None, web.HSTS_MAX_AGE,
         "Strict-Transport-Security max-age on https responses, seconds (0: none).",
         _coerced(web.parse_max_age, "hsts_max_age")],
        ["http_max_header_size", None, web.MAX_HEADER_SIZE,
         "Largest HTTP request head, bytes (16K, 1M...), on both listeners (a WebSocket "
         "handshake's too); 431 beyond.",
         _coerced(web.parse_header_size, "http_max_header_size")],
        ["http_idle_timeout", None, web.IDLE_TIMEOUT,
         "Seconds an HTTP connection may stay idle, and a request head take (0: no limit).",
         _coerced(_seconds, "http_idle_timeout")],
        ["novnc_dir", None, None,
         "noVNC tree served at /ansys/nexus/novnc/ (default: the first of "
         f"{', '.join(viewer.CANDIDATES)} that holds noVNC).",
         _coerced(viewer.check_novnc_dir, "novnc_dir")],
    ]
    optFlags = [
        ["dumpable", None,
         "Leave the gateway dumpable (debuggers, py-spy, core dumps); by default it is not, so that "
         "processes of its user (session programs) cannot read its memory or /proc/PID/environ."],
        ["http_allow_dotfiles", None,
         "Serve and list names starting with a dot (.env, .git) under --http_directory (default: 404)."],
        ["keep_sessions", None,
         "Leave running sessions alive when the gateway stops (SIGTERM, /v1/stop); the next start "
         "adopts them from the state file: their tokens re-attach without a launch."],
    ]

    def opt_allowed_origin(self, value):
        """Origin a WebSocket may come from (https://app.example.com, https://*.example.com,
        http://localhost:*, null); repeatable. Default: any origin."""
        try:
            pattern = limits.OriginPattern(value)
        except ValueError as e:
            raise usage.UsageError(f"--allowed_origin: {e}") from None
        self.setdefault("allowed_origin", []).append(pattern)

    def __init__(self):
        super().__init__()
        self["ws_server_port"] = None
        self["local_session"] = []
        self["tls"] = None

    opt_h = usage.Options.opt_help

    def opt_version(self):
        """Print the version and exit."""
        print(f"nexusws {__version__}")
        sys.exit(0)

    def take_words(self, key, value, rest):
        """C{--local_session} takes two words (getopt cannot): collected here, in order."""
        if key != "local_session":
            return False
        if len(value.split()) == 1:
            count = next(rest, "")
            value = f"{value} {count}"
        self["local_session"].append(_coerced(_local_session, key)(value))
        return True

    def parseArgs(self, ws_server_port=None):
        if ws_server_port is not None:
            try:
                self["ws_server_port"] = _port(ws_server_port)
            except ValueError as e:
                raise usage.UsageError(f"ws_server_port: {e}") from None

    def postOptions(self):
        try:  # one source; the variable leaves the environment (see nexusws.credentials)
            self["security_token"] = credentials.security_token(
                self["security_token"], self["security_token_file"], os.environ)
        except StartupError as e:
            raise usage.UsageError(str(e)) from None
        if self["client_port"] is not None and self["client_hostname"] is None:
            self["client_hostname"] = "localhost"
        if self["ping_timeout"] is not None and not self["ping_interval"]:
            raise usage.UsageError("--ping_timeout needs --ping_interval")
        self._check_listeners()
        if self["novnc_dir"] is None and self["http_directory"] is not None:
            self["novnc_dir"] = viewer.find_novnc()
        self._check_tls()
        self._check_sessions()
        # nexusws.auth.AccessOptions: checked with the wall clock (a groups file
        # is read now); makeService builds the gateway's own with its reactor.
        self.check_access(WALL_CLOCK)

    def _check_listeners(self):
        if self["ws_listen"] is not None and self["ws_server_port"] is not None:
            raise usage.UsageError("give either ws_server_port or --ws_listen, not both")
        if self["ws_listen"] is None:
            if self["ws_server_port"] is None:
                raise usage.UsageError("missing ws_server_port (or --ws_listen)")
            self["ws_listen"] = f"tcp:{self['ws_server_port']}"
        if self["http_listen"] is not None and "http_port" in self.given:
            raise usage.UsageError("give either --http_port or --http_listen, not both")
        if self["http_directory"] is not None:
            if not os.path.isdir(self["http_directory"]):
                raise usage.UsageError(f"--http_directory {self['http_directory']!r}: not a directory")
            if self["http_listen"] is None:
                if self["http_port"] != 0 and self["http_port"] == self["ws_server_port"]:
                    raise usage.UsageError(
                        f"ws_server_port and --http_port are both {self['http_port']}; "
                        "give --http_port another port"
                    )
                self["http_listen"] = f"tcp:{self['http_port']}"
        for key in ("ws_listen", "http_listen"):
            if self[key] is not None:
                try:  # parsed only: no reactor (makeService parses again with its own)
                    parse_endpoint(None, f"--{key}", self[key])
                except StartupError as e:
                    raise usage.UsageError(str(e)) from None

    def _check_tls(self):
        if self["cert"] is None:
            for key in ("key", "cert_chain", "tls_min_version", "tls_ciphers", "client_ca"):
                if key in self.given:
                    raise usage.UsageError(f"--{key} needs --cert")
            return
        for key in ("ws_listen", "http_listen"):
            if self[key] is not None and is_tls_endpoint(self[key]):
                raise usage.UsageError(
                    f"--{key} {self[key]!r} does its own TLS: give TLS either there or "
                    "with --cert/--key, not both"
                )
        try:
            self["tls"] = tls.load_certificate_options(
                self["cert"], self["key"], chain_path=self["cert_chain"], min_version=self["tls_min_version"],
                ciphers=self["tls_ciphers"], client_ca_path=self["client_ca"])
        except StartupError as e:
            raise usage.UsageError(str(e)) from None


    def _check_sessions(self):
        """Read and check the services (each script file runs now, so its errors are option errors).

        C{self["services"]} holds L{ServiceSpec}s: C{makeService} builds them
        with its reactor (L{nexusws.assemble.make_sessions})."""
        services = []
        try:
            if self["remote_session_config"] is not None:
                services += read_config(self["remote_session_config"])
            if self["local_session"]:
                executables = {
                    app: self[f"{app}_executable"] or os.environ.get(env) or None
                    for app, env in EXECUTABLE_ENV.items()
                }
                executables["vnc_port_base"] = self["vnc_port_base"]
                services += builtin_specs(self["local_session"], executables)
            check_names(services)
        except StartupError as e:
            raise usage.UsageError(str(e)) from None
        self["services"] = services
        if services and self["state_file"] is None:
            self["state_file"] = default_state_file(self["ws_listen"])
            self["state_file_is_default"] = True  # makeService creates its directory


def default_state_file(ws_listen, environ=os.environ):
    """Where the session state lives unless --state_file says otherwise.

    Under systemd (C{StateDirectory=} sets C{$STATE_DIRECTORY}) it is
    C{nexusws-state.json} there; otherwise one file per WebSocket listener in
    C{~/.local/state/nexusws}, so two gateways on one machine never share one.
    """
    directory = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if directory:
        return os.path.join(directory, "nexusws-state.json")
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    name = "".join(c if c.isalnum() else "-" for c in ws_listen).strip("-")
    return os.path.join(base, "nexusws", f"{name}.json")


def makeService(options, reactor=None):
    """Assemble the gateway from parsed L{Options} (see L{nexusws.assemble}).

    A gateway about to run (a real reactor) also stops being dumpable unless
    C{--dumpable} is given (see L{nexusws.credentials})."""
    from twisted.internet.base import ReactorBase

    from nexusws.assemble import build_service

    if reactor is None:
        from twisted.internet import reactor
    try:
        top = build_service(options, reactor)
    except StartupError as e:  # a script's __init__, the default state directory: option errors
        if options.parent is None:
            raise usage.UsageError(str(e)) from None
        say(TWISTD_PROG, e)
        raise SystemExit(2) from None
    if isinstance(reactor, ReactorBase) and not options.get("dumpable"):
        why = credentials.set_dumpable(False)
        if why is not None:
            top.notes.append(f"the gateway stays dumpable ({why}): processes of its user "
                             "may read its memory and its environment")
    return top
