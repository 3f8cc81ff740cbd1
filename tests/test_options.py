"""In-memory tests of the command line (L{nexusws.tap.Options}), makeService's
service tree and the start-up checks of L{nexusws.gateway}: no processes."""

import errno
import shlex
import sys

import pytest
from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from nexusws import tap
from nexusws.errors import StartupError
from nexusws.gateway import GatewayService, ListenerService, TunnelsService
from support.options import parse

#: The reference's Basic Operation step 2, word for word after the program name.
BASIC_OPERATION = shlex.split(
    "--http_directory nexusXXX --http_port 9000 --client_hostname localhost "
    "--client_port 5900 --verbose 1 9090"
)


@pytest.fixture(autouse=True)
def no_token_env(monkeypatch):
    """The security token's default comes from the environment: start without it."""
    monkeypatch.delenv(tap.SECURITY_TOKEN_ENV, raising=False)
    for name in ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"):
        monkeypatch.delenv(name, raising=False)


def refused(*args):
    """Parse C{args}, expecting a UsageError; return its message."""
    with pytest.raises(usage.UsageError) as caught:
        parse(*args)
    return str(caught.value)


# --- the reference's options: spelling, defaults, good values -----------------


def test_defaults_are_the_references():
    """Without options: http_port 9090, timeout 300, verbose 0, no TLS, no token."""
    options = parse("9090")
    assert options["ws_server_port"] == 9090
    assert options["ws_listen"] == "tcp:9090"
    assert options["http_port"] == 9090
    assert options["timeout"] == 300
    assert options["verbose"] == 0
    assert options["security_token"] is None
    assert options["log_file"] is None
    assert options["http_directory"] is None and options["http_listen"] is None
    assert options["client_hostname"] is None and options["client_port"] is None
    assert options["tls"] is None
    assert options["local_session"] == []


def test_basic_operation_command_parses_unchanged(tmp_path, monkeypatch):
    """The reference's Basic Operation step 2 arguments parse as the reference means them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nexusXXX").mkdir()
    options = parse(*BASIC_OPERATION)
    assert options["http_directory"] == "nexusXXX"
    assert options["http_port"] == 9000
    assert options["http_listen"] == "tcp:9000"
    assert options["client_hostname"] == "localhost"
    assert options["client_port"] == 5900
    assert options["verbose"] == 1
    assert options["ws_server_port"] == 9090
    assert options["ws_listen"] == "tcp:9090"


@pytest.mark.parametrize(
    "args, key, value",
    [
        (["--http_port", "9000"], "http_port", 9000),
        (["--http_port", "0"], "http_port", 0),
        (["--http_port", "65535"], "http_port", 65535),
        (["--security_token", "s3cret"], "security_token", "s3cret"),
        (["--client_hostname", "vnc.example"], "client_hostname", "vnc.example"),
        (["--client_port", "5900"], "client_port", 5900),
        (["--verbose", "0"], "verbose", 0),
        (["--verbose", "2"], "verbose", 2),
        (["--log_file", "out.log"], "log_file", "out.log"),
        (["--ws_listen", "tcp:0:interface=127.0.0.1"], "ws_listen", "tcp:0:interface=127.0.0.1"),
        (["--connect_timeout", "2.5"], "connect_timeout", 2.5),
        (["--close_timeout", "0"], "close_timeout", 0.0),
        (["--ping_interval", "20", "--ping_timeout", "5"], "ping_timeout", 5.0),
    ],
)
def test_good_values_arrive_typed(args, key, value):
    """Each option's good value is accepted and converted to its type."""
    if key != "ws_listen":
        args = [*args, "8000"]
    assert parse(*args)[key] == value


@pytest.mark.parametrize(
    "args",
    [
        ["--http-port", "9000", "8000"],
        ["--http-port=9000", "8000"],
        ["--http_port=9000", "8000"],
        ["8000", "--http_port", "9000"],
        ["--http_p", "9000", "8000"],
    ],
    ids=["hyphen", "hyphen=", "underscore=", "after-positional", "prefix"],
)
def test_spellings_hyphen_equals_order_and_prefix(args):
    """--http-port, --http_port=V, options after the port and a unique prefix all work."""
    options = parse(*args)
    assert options["http_port"] == 9000
    assert options["ws_server_port"] == 8000


def test_ambiguous_prefix_names_the_candidates():
    """A prefix matching several options is refused, listing them."""
    assert "--http is ambiguous: --http_allow_dotfiles, --http_directory, --http_idle_timeout, --http_listen, " \
        "--http_max_header_size, --http_port" in refused("--http", "0")


def test_security_token_defaults_to_environment(monkeypatch):
    """--security_token defaults to $WEBSOCKETSERVER_SECURITY_TOKEN; the option wins."""
    monkeypatch.setenv(tap.SECURITY_TOKEN_ENV, "from-env")
    assert parse("0")["security_token"] == "from-env"
    assert parse("--security_token", "given", "0")["security_token"] == "given"


def test_client_port_alone_targets_localhost():
    """--client_port without --client_hostname tunnels to localhost."""
    options = parse("--client_port", "5900", "0")
    assert (options["client_hostname"], options["client_port"]) == ("localhost", 5900)


def test_http_directory_enables_http_on_http_port(tmp_path):
    """--http_directory makes an HTTP listener on --http_port (or --http_listen)."""
    assert parse("--http_directory", str(tmp_path), "--http_port", "0", "0")["http_listen"] == "tcp:0"
    options = parse("--http_directory", str(tmp_path), "--http_listen", "tcp:0:interface=127.0.0.1", "0")
    assert options["http_listen"] == "tcp:0:interface=127.0.0.1"


def test_help_lists_every_reference_option_with_its_spelling(capsys):
    """-h prints the usage with each reference option spelled as in the reference."""
    with pytest.raises(SystemExit) as caught:
        parse("-h")
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for name in ("http_directory", "http_port", "cert", "key", "security_token",
                 "remote_session_config", "client_hostname", "client_port", "timeout",
                 "local_session", "verbose", "log_file", "ws_listen", "http_listen"):
        assert f"--{name}=" in out
    assert "ws_server_port" in out


# --- session options --------------------------------------------------------------


def test_local_sessions_become_builtin_services_with_their_counts(tmp_path):
    options = parse("--local_session", "envision", "4", "--local_session", "ensight 1",
                    "--state_file", str(tmp_path / "state.json"), "0")
    assert {(s.name, s.count) for s in options["services"]} == {("envision", 4), ("ensight", 1)}
    assert options["state_file"] == str(tmp_path / "state.json")


def test_timeout_is_seconds_and_defaults_to_300():
    assert parse("--timeout", "60", "0")["timeout"] == 60.0
    assert parse("--timeout=2.5", "0")["timeout"] == 2.5


def test_no_services_no_state_file():
    """Basic mode keeps no session state."""
    options = parse("0")
    assert options["services"] == [] and options["state_file"] is None


def test_default_state_file_is_per_listener_or_in_the_systemd_state_directory():
    from nexusws.tap import default_state_file

    home = {"HOME": "/h", "XDG_STATE_HOME": "/h/state"}
    assert default_state_file("tcp:9090", home) == "/h/state/nexusws/tcp-9090.json"
    assert default_state_file("tcp:9091", home) != default_state_file("tcp:9090", home)
    assert default_state_file("tcp:9090", {"STATE_DIRECTORY": "/var/lib/nexusws"}) == (
        "/var/lib/nexusws/nexusws-state.json")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--local_session", "foo", "4"], "'foo 4' is not 'appname count'"),
        (["--local_session", "envision", "many"], "'envision many' is not"),
        (["--local_session", "envision", "-3"], "'envision -3' is not"),
        (["--timeout", "soon"], "--timeout: 'soon' is not a number of seconds"),
        (["--timeout", "-1"], "--timeout: '-1' is not a number of seconds"),
    ],
)
def test_session_options_with_bad_values_say_what_is_wrong(args, expected):
    """A bad --local_session or --timeout value is reported as such, not just refused."""
    assert expected in refused(*args, "0")


# --- bad values ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--http_port", "65536", "0"], "--http_port: '65536' is not a port number"),
        (["--http_port", "-1", "0"], "--http_port: '-1' is not a port number"),
        (["--http_port", "http", "0"], "--http_port: 'http' is not a port number"),
        (["--client_port", "vnc", "0"], "--client_port: 'vnc' is not a port number"),
        (["70000"], "ws_server_port: '70000' is not a port number"),
        (["ws"], "ws_server_port: 'ws' is not a port number"),
        (["--", "-1"], "ws_server_port: '-1' is not a port number"),
        (["--verbose", "-1", "0"], "--verbose: '-1' is not a verbosity level"),
        (["--verbose", "loud", "0"], "--verbose: 'loud' is not a verbosity level"),
        (["--connect_timeout", "nan", "0"], "--connect_timeout: 'nan' is not a number of seconds"),
        (["--close_timeout", "inf", "0"], "--close_timeout: 'inf' is not a number of seconds"),
        # A wait of 0 s would fail every tunnel, start or reservation at once.
        (["--connect_timeout", "0", "0"], "--connect_timeout: '0' is not a number of seconds > 0"),
        (["--start_timeout", "0", "0"], "--start_timeout: '0' is not a number of seconds > 0"),
        (["--timeout", "0", "0"], "--timeout: '0' is not a number of seconds > 0"),
        (["--ping_timeout", "5", "0"], "--ping_timeout needs --ping_interval"),
        (["--http_directory", "/nonexistent/dir", "0"], "--http_directory '/nonexistent/dir': not a directory"),
        (["--key", "server.key", "0"], "--key needs --cert"),
        ([], "missing ws_server_port (or --ws_listen)"),
        (["--ws_listen", "tcp:0", "8000"], "either ws_server_port or --ws_listen"),
        (["--http_listen", "tcp:0", "--http_port", "0", "0"], "either --http_port or --http_listen"),
        (["--bogus", "0"], "no such option --bogus"),
        (["--verbose"], "--verbose needs a value"),
        (["--help=yes"], "--help takes no value"),
        (["1", "2"], "Wrong number of arguments"),
        (["--advertise_url", "http://node1:8080/", "0"],
         "--advertise_url: 'http://node1:8080/' is not a ws:// or wss:// URL with a host"),
        (["--advertise_url", "ws://", "0"], "--advertise_url: 'ws://' is not a ws:// or wss://"),
        (["--advertise_url", "ws://node1:99999/", "0"], "--advertise_url: 'ws://node1:99999/' is not a URL"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(args, expected):
    """Each bad value is a UsageError whose message names the option and the value."""
    assert expected in refused(*args)


def test_http_directory_that_is_a_file_is_refused(tmp_path):
    """--http_directory must be a directory, not a file."""
    path = tmp_path / "file"
    path.write_text("x")
    assert "not a directory" in refused("--http_directory", str(path), "0")


def test_ws_and_http_on_the_same_port_is_refused(tmp_path):
    """ws_server_port equal to --http_port (9090 is both defaults) is caught before binding."""
    message = refused("--http_directory", str(tmp_path), "9090")
    assert "both 9090" in message


@pytest.mark.parametrize(
    "description, expected",
    [
        ("bogus:1", "Unknown endpoint type: 'bogus'"),
        ("tcp:abc", "invalid literal"),
        ("tcp:0:bogus=1", "unexpected keyword argument 'bogus'"),
        ("", "Unknown endpoint type"),
        ("systemd:domain=INET:name=ws", "systemd passed no such socket (LISTEN_FDS=unset"),
        ("systemd:domain=INET:index=0", "systemd passed no such socket"),
        ("systemd:domain=INET", "Specify exactly one of descriptor index or name"),
        ("ssl:0:privateKey=/nonexistent.pem", "No such file or directory: /nonexistent.pem"),
    ],
)
def test_unusable_endpoint_strings_are_usage_errors(description, expected):
    """A --ws_listen string Twisted cannot use is a one-line UsageError, never a traceback."""
    message = refused("--ws_listen", description)
    assert message.startswith(f"--ws_listen {description!r}: not a usable endpoint: ")
    assert expected in message
    assert "\n" not in message


def test_unusable_http_listen_is_refused_too(tmp_path):
    """--http_listen strings are checked like --ws_listen ones."""
    message = refused("--http_directory", str(tmp_path), "--http_listen", "tcp:x", "0")
    assert message.startswith("--http_listen 'tcp:x': not a usable endpoint")


def test_under_twistd_a_usage_error_is_one_line_and_exit_2(capfd):
    """Under twistd (a parent is set) a bad value prints one line and exits 2, not twistd's usage."""
    options = tap.Options()
    options.parent = object()
    with pytest.raises(SystemExit) as caught:
        options.parseOptions(["--http_port", "x", "0"])
    assert caught.value.code == 2
    err = capfd.readouterr().err
    assert err == "twistd nexusws: error: --http_port: 'x' is not a port number (0-65535)\n"


# --- makeService's service tree ---------------------------------------------------


def test_make_service_assembles_tunnels_then_listeners(tmp_path):
    """makeService: a GatewayService holding TunnelsService first, then ws and http listeners;
    its notes: loopback is trusted as a proxy on a TCP API listener, and the API listens on
    every interface without a security token."""
    options = parse("--http_directory", str(tmp_path), "--http_port", "0",
                    "--client_port", "5900", "--verbose", "1", "--log_file", "x.log", "0")
    top = tap.makeService(options, MemoryReactorClock())
    assert isinstance(top, GatewayService)
    assert (top.verbose, top.log_file) == (1, "x.log")
    assert len(top.notes) == 2 and "reachable from other hosts" in top.notes[1]
    assert "is TCP and --trusted_proxy trusts loopback" in top.notes[0]
    children = list(top)
    assert [type(c) for c in children] == [TunnelsService, ListenerService, ListenerService]
    assert [(c.label, c.scheme, c.description) for c in children[1:]] == [
        ("--ws_listen", "ws", "tcp:0"),
        ("--http_listen", "http", "tcp:0"),
    ]


def test_make_service_without_http_directory_has_no_http_listener():
    """No --http_directory, no HTTP listener; a given --http_port and no backend are noted."""
    top = tap.makeService(parse("--http_port", "0", "0"), MemoryReactorClock())
    assert [getattr(c, "label", None) for c in top] == [None, "--ws_listen"]
    assert any("no --client_port" in n for n in top.notes)
    assert any("without --http_directory" in n for n in top.notes)


# --- start-up checks (no real sockets) -----------------------------------------------


class _Endpoint:
    def __init__(self, result):
        self.result = result

    def listen(self, factory):
        return self.result


def test_listen_failure_is_a_one_line_startup_error():
    """A listener that cannot bind raises StartupError naming the option, string and reason."""
    failure = error.CannotListenError("127.0.0.1", 9, OSError(errno.EADDRINUSE, "Address already in use"))
    listener = ListenerService("--ws_listen", "tcp:9", _Endpoint(defer.fail(failure)), None, "ws")
    with pytest.raises(StartupError) as caught:
        listener.privilegedStartService()
    assert str(caught.value) == "--ws_listen 'tcp:9': cannot listen: Address already in use"


def test_listener_that_does_not_listen_at_once_is_refused():
    """An endpoint whose listen() has not fired by the end of start-up is refused, not trusted."""
    listener = ListenerService("--ws_listen", "x:", _Endpoint(defer.Deferred()), None, "ws")
    with pytest.raises(StartupError, match="does not listen at once"):
        listener.privilegedStartService()


@pytest.mark.errors_expected  # provokes the error it checks is logged
def test_gateway_refuses_a_log_file_it_cannot_open(tmp_path, monkeypatch):
    """--log_file in a missing directory stops start-up with a line naming the file."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the failure installs a hook
    path = str(tmp_path / "missing" / "gw.log")
    with pytest.raises(StartupError) as caught:
        GatewayService(log_file=path).privilegedStartService()
    assert str(caught.value) == f"--log_file {path!r}: cannot open: No such file or directory"
