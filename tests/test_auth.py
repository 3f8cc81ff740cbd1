"""Identity and access decisions in memory: trusted proxies, the user header,
X-Forwarded-For, local callers (never a request that came through a proxy),
listener reachability, the start-up notes about who can pose as anyone, the
access options, and the session WebSocket's checks in L{nexusws.routing.TokenRouter}."""

import json
import os
import socket
import stat

import pytest
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.systemd import ListenFDs

from nexusws.addresses import is_local, listener_is_local, parse_network, peer_host
from nexusws.api import CALLS, Who
from nexusws.auth import Access, TrustedProxies, access_notes
from nexusws.groups import GroupsFile, os_member
from nexusws.routing import Launch, NoRouter, TokenRouter
from support.options import parse

USER = "x-remote-user"


def warned(events, namespace="nexusws.auth"):
    return [e["log_format"].format(**e) for e in events
            if e.get("log_namespace") == namespace and e["log_level"].name == "warn"]


# --- trusted proxies --------------------------------------------------------------------


@pytest.mark.parametrize("host, trusted", [
    ("127.0.0.1", True), ("127.9.8.7", True), ("::1", True), ("[::1]", True),
    ("::ffff:127.0.0.1", True),  # IPv4-mapped, as a dual-stack socket reports IPv4 peers
    ("unix", True),
    ("10.0.0.1", False), ("::2", False), ("::ffff:10.0.0.1", False),
    ("localhost", False), ("", False), ("not an address", False),
])
def test_by_default_only_loopback_and_unix_socket_peers_are_trusted_proxies(host, trusted):
    assert (host in TrustedProxies()) is trusted


@pytest.mark.parametrize("host, trusted", [
    ("10.1.2.3", True), ("10.255.255.255", True), ("192.168.1.7", True), ("::ffff:10.0.0.9", True),
    ("fd00::17", True), ("fe80::1%eth0", False),
    ("127.0.0.1", False), ("::1", False), ("unix", False), ("11.0.0.1", False), ("192.168.1.8", False),
])
def test_trusted_proxy_addresses_and_cidr_networks_replace_the_default(host, trusted):
    proxies = TrustedProxies(["10.0.0.0/8", "192.168.1.7", "fd00::/8"])
    assert (host in proxies) is trusted


def test_an_ipv4_mapped_trusted_proxy_matches_its_ipv4_peers():
    assert parse_network("::ffff:10.0.0.0/104") == parse_network("10.0.0.0/8")
    mapped = TrustedProxies(["::ffff:10.0.0.1"])
    assert "10.0.0.1" in mapped and "::ffff:10.0.0.1" in mapped and "10.0.0.2" not in mapped


@pytest.mark.parametrize("value", ["", "10.0.0.0/33", "example.org", "1.2.3.4.5", "::g"])
def test_a_bad_trusted_proxy_value_is_a_value_error_naming_it(value):
    with pytest.raises(ValueError, match="is not an IP address, a CIDR network"):
        parse_network(value)


@pytest.mark.parametrize("peer, host", [
    ("tcp4:1.2.3.4:5678", "1.2.3.4"), ("tcp6:::1:5678", "::1"), ("tcp6:fe80::1:80", "fe80::1"),
    ("unix:/run/x.sock", "unix"), ("unix", "unix"),
    (IPv4Address("TCP", "1.2.3.4", 5), "1.2.3.4"), (IPv6Address("TCP", "::1", 5), "::1"),
    (UNIXAddress(None), "unix"), (None, ""),
])
def test_peer_host_reads_autobahn_peers_and_twisted_addresses(peer, host):
    assert peer_host(peer) == host


# --- identify -------------------------------------------------------------------------


def test_the_user_header_of_a_trusted_proxy_names_the_user(events):
    who = Access().identify("tcp4:127.0.0.1:40000", {USER: " alice "})
    assert (who.user, who.client, who.peer, who.proxied) == ("alice", "127.0.0.1", "127.0.0.1", True)
    assert warned(events) == []


def test_the_user_header_from_an_untrusted_peer_is_ignored_and_logged_once(events):
    who = Access().identify("tcp4:203.0.113.9:40000", {USER: "alice"})
    assert (who.user, who.client, who.proxied) == (None, "203.0.113.9", False)
    assert warned(events) == [("ignored x-remote-user: 'alice' from 203.0.113.9: not a trusted "
                               "proxy (--trusted_proxy 127.0.0.0/8, ::1, unix)")]


def test_without_the_user_header_the_caller_is_anonymous_and_nothing_is_logged(events):
    assert Access().identify("tcp4:203.0.113.9:1", {}).user is None
    assert Access().identify("tcp4:127.0.0.1:1", {"x-other": "alice"}).user is None
    assert warned(events) == []


def test_the_user_header_name_is_configurable_and_case_insensitive():
    access = Access(user_header="X-Auth-Name")
    assert access.identify("tcp4:127.0.0.1:1", {"x-auth-name": "bob", USER: "alice"}).user == "bob"


@pytest.mark.parametrize("value", ["", "   ", "a\x07b", "x" * 300])
def test_an_unusable_user_header_value_leaves_the_caller_anonymous_with_a_warning(value, events):
    assert Access().identify("tcp4:127.0.0.1:1", {USER: value}).user is None
    assert len(warned(events)) == 1


@pytest.mark.parametrize("forwarded, client", [
    ("203.0.113.5", "203.0.113.5"),
    ("198.51.100.1, 203.0.113.5", "203.0.113.5"),  # the leftmost hop is the client's own claim
    ("203.0.113.5, 10.0.0.2", "203.0.113.5"),      # a trusted hop in front of us is skipped
    ("10.0.0.3, 10.0.0.2", "10.0.0.3"),            # all trusted: the first
    ("2001:db8::7", "2001:db8::7"),
    ("::ffff:203.0.113.5", "203.0.113.5"),
    ("", "127.0.0.1"),
])
def test_behind_a_trusted_proxy_the_client_is_the_last_untrusted_forwarded_hop(forwarded, client):
    access = Access(trusted=TrustedProxies(["127.0.0.1", "10.0.0.0/8"]))
    assert access.identify("tcp4:127.0.0.1:1", {"x-forwarded-for": forwarded}).client == client


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored():
    who = Access().identify("tcp4:203.0.113.9:1", {"x-forwarded-for": "127.0.0.1"})
    assert (who.client, who.local) == ("203.0.113.9", False)


def test_a_client_forwarded_by_a_local_proxy_is_remote_and_a_direct_local_one_is_local():
    access = Access()
    assert access.identify("tcp4:127.0.0.1:1", {}).local
    assert access.identify("unix", {}).local
    assert access.identify(UNIXAddress(None), {"x-other": "1"}).local
    assert not access.identify("tcp4:127.0.0.1:1", {"x-forwarded-for": "203.0.113.5"}).local


@pytest.mark.parametrize("peer", ["unix", UNIXAddress(None), "tcp4:127.0.0.1:1", "tcp6:::1:1"])
@pytest.mark.parametrize("headers", [
    {"x-forwarded-for": "127.0.0.1"},                # nginx forwarding a user on this host
    {"x-forwarded-for": "::1"},
    {"x-forwarded-for": "127.0.0.1, 127.0.0.1"},
    {"x-forwarded-for": ""},                         # present, even empty
    {USER: "alice"},                                 # a user header alone
    {USER: "alice", "x-forwarded-for": "127.0.0.1"},
    {"forwarded": "for=127.0.0.1"}, {"x-real-ip": "127.0.0.1"},
])
def test_a_request_through_a_local_proxy_is_never_local_whatever_address_it_forwards(peer, headers):
    """The proxy (nginx on the shipped UNIX socket, or on loopback) acts for its users,
    and on the host that runs the sessions users with shells reach it too: none of them
    is the operator, whichever address nginx saw."""
    who = Access().identify(peer, headers)
    assert (who.proxied, who.forwarded, who.local) == (True, True, False)
    assert not Access().may_change(who, False, remote_api=False)  # stop
    assert not Access().may_change(who, False, remote_api=True)  # reserve
    assert Access(allow_remote_api=True).may_change(who, False, remote_api=True)


def test_through_the_shipped_trust_only_the_unix_socket_names_users():
    """--trusted_proxy unix: nginx on the socket names the user; a loopback peer (any
    local user, were the listener TCP) names nobody, and sending the header does not
    make it local either."""
    access = Access(trusted=TrustedProxies(["unix"]))
    nginx = access.identify("unix", {USER: "bob", "x-forwarded-for": "127.0.0.1"})
    assert (nginx.user, nginx.client, nginx.local) == ("bob", "127.0.0.1", False)
    intruder = access.identify("tcp4:127.0.0.1:5", {USER: "alice", "x-forwarded-for": "127.0.0.1"})
    assert (intruder.user, intruder.client, intruder.proxied, intruder.local) == (
        None, "127.0.0.1", False, False)


def test_with_no_trusted_proxy_headers_are_ignored_and_a_peer_sending_them_is_not_local():
    """A proxy left out of --trusted_proxy by mistake would otherwise make all its
    clients local callers: the headers name nobody, yet say a proxy sent the request."""
    who = Access(trusted=TrustedProxies([])).identify(
        "tcp4:127.0.0.1:1", {USER: "alice", "x-forwarded-for": "203.0.113.5"})
    assert (who.user, who.client, who.proxied, who.forwarded, who.local) == (
        None, "127.0.0.1", False, True, False)
    assert Access(trusted=TrustedProxies([])).identify("tcp4:127.0.0.1:1", {}).local


@pytest.mark.parametrize("host, local", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("unix", True), ("10.0.0.1", False), ("0.0.0.0", False), ("::", False), ("garbage", False),
])
def test_is_local_means_loopback_or_a_unix_socket(host, local):
    assert is_local(host) is local


# --- calls that change something ----------------------------------------------------------------


@pytest.mark.parametrize("local, token, allow, call, accepted", [  # local: a direct caller
    (True, False, False, "reserve", True),
    (True, False, False, "stop", True),
    (False, True, False, "stop", True),       # the security token is accepted from anywhere
    (False, False, False, "reserve", False),  # a remote client without it: refused
    (False, False, False, "release", False),
    (False, False, False, "stop", False),
    (False, False, True, "reserve", True),    # --allow_remote_api
    (False, False, True, "release", True),
    (False, False, True, "stop", False),      # never stop, though
])
def test_state_changing_calls_need_a_local_client_the_security_token_or_allow_remote_api(
        local, token, allow, call, accepted):
    who = Access().identify("tcp4:127.0.0.1:1" if local else "tcp4:203.0.113.9:1", {})
    remote_api = CALLS[call].who is Who.REMOTE_API
    assert Access(allow_remote_api=allow).may_change(who, token, remote_api) is accepted


# --- listeners and start-up notes -------------------------------------------------------------------


@pytest.mark.parametrize("description, local", [
    ("tcp:9090:interface=127.0.0.1", True), ("tcp:0:interface=127.3.2.1", True),
    (r"tcp6:9090:interface=\:\:1", True), ("tcp:9090:interface=localhost", True),
    ("tcp:9090:50:127.0.0.1", True), ("unix:/run/nexusws.sock", True),
    ("ssl:443:privateKey=k.pem:interface=127.0.0.1", True),
    ("tcp:9090", False), ("tcp:9090:interface=0.0.0.0", False), ("tcp6:9090", False),
    ("tcp:9090:interface=192.0.2.1", False), ("systemd:domain=INET:name=http", False),
])
def test_a_listener_is_local_only_on_a_loopback_interface_or_a_unix_socket(description, local):
    assert listener_is_local(description) is local


@pytest.mark.parametrize("family, address, local", [
    (socket.AF_INET, ("127.0.0.1", 0), True), (socket.AF_INET6, ("::1", 0), True),
    (socket.AF_INET, ("0.0.0.0", 0), False), (socket.AF_INET6, ("::", 0), False),
])
def test_a_socket_from_systemd_is_local_where_it_is_bound_to_loopback(family, address, local):
    with socket.socket(family) as listening:
        listening.bind(address)
        listening.listen()
        inherited = ListenFDs([listening.fileno()], ["http"])
        assert listener_is_local("systemd:domain=INET:name=http", inherited) is local
        assert listener_is_local("systemd:domain=INET:index=0", inherited) is local
        # A name or an index systemd did not pass: not known to be local.
        assert listener_is_local("systemd:domain=INET:name=ws", inherited) is False
        assert listener_is_local("systemd:domain=INET:index=1", inherited) is False
        assert listening.fileno() >= 0  # its own descriptor was left open


def test_a_unix_socket_from_systemd_is_local(tmp_path):
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "s"))
        listening.listen()
        assert listener_is_local("systemd:domain=UNIX:name=http", ListenFDs([listening.fileno()], ["http"]))


NO_PROXY = TrustedProxies([])


def test_start_up_warns_when_the_api_is_reachable_from_other_hosts_without_a_security_token():
    (note,) = access_notes(Access(trusted=NO_PROXY), [], "tcp:9090", None)
    assert note == ("the /v1 API on --http_listen tcp:9090 is reachable from other hosts and "
                    "there is no --security_token: /v1/status is open to them, reserve, release "
                    "and stop are refused to them")
    assert "open to them (--allow_remote_api)" in access_notes(
        Access(trusted=NO_PROXY, allow_remote_api=True), [], "tcp:9090", None)[0]
    assert access_notes(Access(trusted=NO_PROXY), [], "tcp:9090", "s3cret") == []
    assert access_notes(Access(trusted=NO_PROXY), [], "tcp:9090:interface=127.0.0.1", None) == []
    assert access_notes(Access(), [], None, None) == []


def test_start_up_warns_when_the_admin_group_has_no_member(members):
    (note,) = access_notes(Access(groups_file=members, admin_group="admnis"), [], None, None)
    assert note == ("--admin_group 'admnis' has no member in --groups_file: only the operator (the "
                    "security token, or a local caller without one) is an administrator")
    assert access_notes(Access(groups_file=members, admin_group="ClusterRendering"), [], None, None) == []
    # With the system's groups too: a group neither knows.
    (note,) = access_notes(Access(groups_file=members, os_groups=os_member, admin_group="admnis"), [], None, None)
    assert note.startswith("--admin_group 'admnis' has no member in --groups_file or the system's groups: ")
    assert access_notes(Access(os_groups=os_member, admin_group="root"), [], None, None) == []


LOOPBACK_NOTE = ("--http_listen {listen} is TCP and --trusted_proxy trusts loopback ({trusted}): every "
                 "local user can connect and name any user in x-remote-user; on a host with other "
                 "users, listen on UNIX sockets only nginx may open and give --trusted_proxy unix "
                 "(README: Deploying)")


@pytest.mark.parametrize("listen", [
    "tcp:9000:interface=127.0.0.1", "tcp:9000", "tcp6:9000", r"tcp6:9000:interface=\:\:1",
    "tcp:9000:interface=localhost", "ssl:443:privateKey=k.pem"])
@pytest.mark.parametrize("trusted", [None, ["127.0.0.1"], ["::1"], ["0.0.0.0/0"], ["127.0.0.0/8", "unix"]])
def test_start_up_warns_when_loopback_is_trusted_and_the_api_listens_on_tcp(listen, trusted):
    """Local users (the session host's, with shells) can connect to a TCP listener from
    loopback: trusted, they could name any user. Also with a security token."""
    access = Access(trusted=None if trusted is None else TrustedProxies(trusted))
    expected = LOOPBACK_NOTE.format(listen=listen, trusted=access.trusted)
    assert expected in access_notes(access, [], listen, "s3cret")


@pytest.mark.parametrize("listen, trusted", [
    ("tcp:9000:interface=127.0.0.1", ["unix"]),       # nobody on loopback is believed
    ("tcp:9000:interface=127.0.0.1", ["10.0.0.1"]),
    ("tcp:9000:interface=192.0.2.1", None),           # local users come from 192.0.2.1 there
    ("unix:/run/nexusws/http.sock:mode=660", None),
])
def test_no_loopback_note_where_no_local_user_is_believed_over_tcp(listen, trusted):
    access = Access(trusted=None if trusted is None else TrustedProxies(trusted))
    assert access_notes(access, [], listen, "s3cret") == []


@pytest.mark.parametrize("listen, mode", [
    ("unix:/run/x/http.sock", "666"), ("unix:/run/x/http.sock:mode=777", "777"),
    ("unix:/run/x/http.sock:mode=0662", "662")])
def test_start_up_warns_when_a_trusted_unix_socket_is_open_to_every_local_user(listen, mode):
    (note,) = access_notes(Access(trusted=TrustedProxies(["unix"])), [], listen, "s3cret")
    assert note == (f"--http_listen {listen} is a UNIX socket every local user may open (mode {mode}) "
                    "and --trusted_proxy trusts UNIX sockets: any of them can name any user in "
                    "x-remote-user; give it mode 0660 and nginx's group (SocketMode=, SocketGroup=; "
                    "unix:PATH:mode=660)")
    assert access_notes(Access(trusted=TrustedProxies(["127.0.0.1"])), [], listen, "s3cret") == [], \
        "UNIX peers not trusted: nothing to pose as"


@pytest.mark.parametrize("mode, warned", [(0o660, False), (0o600, False), (0o666, True), (0o662, True)])
def test_the_notes_look_at_the_mode_of_a_unix_socket_from_systemd(tmp_path, mode, warned):
    """The shipped units' sockets: SocketMode=0660, no note; a mode others may write to, one."""
    path = tmp_path / "http.sock"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        listening.listen()
        os.chmod(path, mode)
        assert stat.S_IMODE(path.stat().st_mode) == mode
        inherited = ListenFDs([listening.fileno()], ["http"])
        notes = access_notes(Access(trusted=TrustedProxies(["unix"])), [],
                             "systemd:domain=UNIX:name=http", "s3cret", inherited)
        assert bool(notes) is warned and all(f"(mode {mode:03o})" in n for n in notes)
        # A loopback TCP socket from systemd, with loopback trusted: the other note.
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            tcp.listen()
            (note,) = access_notes(Access(), [], "systemd:domain=INET:name=http", "s3cret",
                                   ListenFDs([tcp.fileno()], ["http"]))
            assert "is TCP and --trusted_proxy trusts loopback" in note


class Service:
    def __init__(self, name="svc", group=None):
        self.name, self.group, self.index = name, group, 0


def test_start_up_warns_about_a_group_service_when_no_groups_are_configured(tmp_path):
    (note,) = access_notes(Access(), [Service("render", "ClusterRendering"), Service()], None, None)
    assert note == ("service 'render' is for group 'ClusterRendering' but there is no "
                    "--groups_file or --os_groups: nobody can use it")
    path = tmp_path / "g.json"
    path.write_text("{}")
    assert access_notes(Access(groups_file=GroupsFile(path, Clock())), [Service("r", "g")],
                        None, None) == []


# --- the options ---------------------------------------------------------------------------------


def test_access_options_default_to_x_remote_user_loopback_proxies_and_no_groups():
    access = parse("0")["access"]
    assert access.user_header == "x-remote-user"
    assert str(access.trusted) == "127.0.0.0/8, ::1, unix"
    assert (access.groups_file, access.os_groups, access.require_group, access.allow_remote_api) == (
        None, None, None, False)


def test_access_options_are_parsed_into_the_access(tmp_path):
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"RemoteSession": ["alice"]}))
    access = parse("--user_header", "X-Auth-User", "--trusted_proxy", "10.0.0.0/8",
                   "--trusted-proxy=192.0.2.1", "--groups_file", str(groups), "--os_groups",
                   "--require_group", "RemoteSession", "--allow_remote_api", "0")["access"]
    assert access.user_header == "x-auth-user"
    assert str(access.trusted) == "10.0.0.0/8, 192.0.2.1"
    assert access.groups_file.members("RemoteSession") == {"alice"}
    assert access.os_groups is not None
    assert (access.require_group, access.allow_remote_api) == ("RemoteSession", True)


def test_admin_group_names_the_administrators_group():
    assert parse("--admin_group", " admins ", "--os_groups", "0")["access"].admin_group == "admins"
    assert parse("0")["access"].admin_group is None


def test_trusted_proxy_none_trusts_no_proxy():
    assert str(parse("--trusted_proxy", "none", "0")["access"].trusted) == "none"


@pytest.mark.parametrize("args, message", [
    (["--trusted_proxy", "example.org"], "--trusted_proxy: 'example.org' is not an IP address"),
    (["--user_header", "X Remote"], "'X Remote' is not an HTTP header name"),
    (["--require_group", "RemoteSession"], "--require_group needs --groups_file or --os_groups"),
    (["--require_group", " ", "--os_groups"], "--require_group: the group name is empty"),
    (["--admin_group", "admins"], "--admin_group needs --groups_file or --os_groups"),
    (["--admin_group", "", "--os_groups"], "--admin_group: the group name is empty"),
    (["--groups_file", "/nonexistent/groups.json"],
     "--groups_file /nonexistent/groups.json: cannot read it: No such file or directory"),
])
def test_bad_access_options_stop_start_up_with_one_line(args, message):
    with pytest.raises(usage.UsageError) as caught:
        parse(*args, "0")
    assert message in str(caught.value) and "\n" not in str(caught.value)


# --- the session WebSocket ------------------------------------------------------------------------


class Handshake:
    """What TokenRouter reads of Autobahn's ConnectionRequest."""

    def __init__(self, token="T1", peer="tcp4:127.0.0.1:40000", user=None, **headers):
        self.params = {"token": [token]}
        self.peer = peer
        self.headers = {k.replace("_", "-"): v for k, v in headers.items()}
        if user is not None:
            self.headers[USER] = user


class Reservation:
    def __init__(self, user=None, group=None):
        self.user, self.service, self.index = user, Service("Desktop", group), 3


class Registry:
    def __init__(self, reservation):
        self.reservation, self.activated = reservation, []

    def get(self, token):
        return self.reservation

    def activate(self, token, attachment=None, takeover=False):
        from twisted.internet import defer

        self.activated.append(token)
        return defer.Deferred()

    def deactivate(self, token, attachment=None, ended=None):
        pass


@pytest.fixture
def members(tmp_path):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({"ClusterRendering": ["alice"], "RemoteSession": ["alice", "bob"]}))
    return GroupsFile(path, Clock())


def route(reservation, handshake, access=None):
    registry = Registry(reservation)
    return TokenRouter(registry, NoRouter(), access).route(handshake), registry


def refused(reservation, handshake, access=None):
    registry = Registry(reservation)
    with pytest.raises(ConnectionDeny) as caught:
        TokenRouter(registry, NoRouter(), access).route(handshake)
    assert registry.activated == [], "launched for a refused WebSocket"
    return caught.value.code, caught.value.reason


def test_a_token_presented_by_the_user_who_reserved_it_launches(members):
    launch, registry = route(Reservation("alice"), Handshake(user="alice"))
    assert isinstance(launch, Launch) and registry.activated == ["T1"]


def test_a_token_presented_as_another_user_is_refused_403_and_logged_without_the_token(events):
    code, reason = refused(Reservation("alice"), Handshake(token="SECRET-TOKEN", user="bob"))
    assert (code, reason) == (403, "this token was reserved by another user")
    (line,) = warned(events, "nexusws.routing")
    assert line == ("session WebSocket refused: 127.0.0.1 as 'bob', for Desktop#3: this token "
                    "was reserved by another user ('alice')")
    assert not any("SECRET-TOKEN" in repr(e) for e in events)


def test_a_users_token_presented_anonymously_or_through_an_untrusted_peer_is_refused_403():
    assert refused(Reservation("alice"), Handshake())[0] == 403
    assert refused(Reservation("alice"), Handshake(peer="tcp4:203.0.113.9:1", user="alice"))[0] == 403


def test_a_sessions_launch_knows_its_clients_address_for_the_dashboard():
    launch, _ = route(Reservation("alice"), Handshake(user="alice", x_forwarded_for="198.51.100.7"))
    assert launch.client == "198.51.100.7", "behind a trusted proxy: the client it forwards"
    launch, _ = route(Reservation(None), Handshake(peer="tcp4:203.0.113.9:1", x_forwarded_for="10.0.0.1"))
    assert launch.client == "203.0.113.9", "an untrusted peer's X-Forwarded-For counts for nothing"


def test_an_anonymous_reservation_may_be_used_by_anyone():
    assert isinstance(route(Reservation(None), Handshake(user="bob"))[0], Launch)
    assert isinstance(route(Reservation(None), Handshake())[0], Launch)


def test_a_group_service_websocket_needs_a_member_even_with_the_right_token(members):
    access = Access(groups_file=members)
    assert isinstance(route(Reservation("alice", "ClusterRendering"), Handshake(user="alice"),
                            access)[0], Launch)
    code, reason = refused(Reservation("bob", "ClusterRendering"), Handshake(user="bob"), access)
    assert (code, reason) == (403, "user 'bob' is not a member of group 'ClusterRendering'")
    code, reason = refused(Reservation(None, "ClusterRendering"), Handshake(), access)
    assert code == 403 and "the user is unknown" in reason


def test_require_group_applies_to_every_session_websocket(members):
    access = Access(groups_file=members, require_group="RemoteSession")
    assert isinstance(route(Reservation("bob"), Handshake(user="bob"), access)[0], Launch)
    assert refused(Reservation(None), Handshake(user="carol"), access) == (
        403, "user 'carol' is not a member of group 'RemoteSession'")
    assert refused(Reservation(None), Handshake(), access)[0] == 403
