"""Who is calling, and may they: users from a trusted proxy, groups, local callers.

nexusws authenticates nobody itself. A front proxy (nginx) that has
authenticated a user names them in a header (C{--user_header}, default
C{X-Remote-User}); the header is believed only when the TCP peer is a trusted
proxy (C{--trusted_proxy}, default loopback and UNIX sockets). From any other
peer it is ignored, with a warning. C{X-Forwarded-For} gives the client's
address, likewise only behind a trusted proxy.

A I{local} caller (L{Identity.local}: the operator's side, who sees every
token and may stop the gateway without the security token) is a program that
connects to the gateway directly from this host. A request that came through a
proxy (it carries the user header or a forwarding header) is never local,
whatever address the proxy forwards: behind nginx on this host, every user,
local or not, is one of nginx's users.

Groups come from a JSON file (C{--groups_file}, re-read when it changes) and
optionally from the operating system (C{--os_groups}). A service whose
options carry C{"group"} is for that group's members; C{--require_group}
makes every session need one more group.

The pieces: L{nexusws.addresses} reads peer, network and listener addresses;
L{nexusws.sites} judges which names and web pages may call the API.
"""

import ipaddress
from urllib.parse import urlsplit

from twisted.python import usage

from nexusws.addresses import (
    UNIX,
    is_local,
    listener_address,
    listener_is_local,
    parse_address,
    parse_network,
    peer_host,
)
from nexusws.errors import StartupError
from nexusws.groups import GroupsFile, check_user, os_group_exists, os_member
from nexusws.logs import logger, printable
from nexusws.sites import HOST_NAME, Sites, is_address_literal

_log = logger("nexusws.auth")

#: The proxies trusted without C{--trusted_proxy}: this host only.
DEFAULT_TRUSTED = ("127.0.0.0/8", "::1", "unix")
#: Headers a proxy adds (lower case): a request carrying one (or the user header) came
#: through a proxy, trusted or not, and is not a local caller's.
FORWARDING_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
#: The characters of an HTTP header name (RFC 9110 "token").
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


# --- trusted proxies ----------------------------------------------------------------


class TrustedProxies:
    """The C{--trusted_proxy} set: C{host in proxies}."""

    def __init__(self, values=DEFAULT_TRUSTED):
        self.networks = [value if not isinstance(value, str) else parse_network(value)
                         for value in values]

    def __contains__(self, host):
        if host == UNIX:
            return UNIX in self.networks
        address = parse_address(host)
        return address is not None and any(
            n != UNIX and n.version == address.version and address in n for n in self.networks)

    def __str__(self):
        return ", ".join(str(n.network_address) if n != UNIX and n.num_addresses == 1 else str(n)
                         for n in self.networks) or "none"


# --- identity -----------------------------------------------------------------------


class Identity:
    """Who made a request.

    @ivar user: the user name, or None (anonymous).
    @ivar client: the client's address: the peer's, or behind a trusted proxy
        the last untrusted hop of C{X-Forwarded-For}.
    @ivar peer: the TCP peer's host.
    @ivar proxied: whether the peer is a trusted proxy.
    @ivar forwarded: whether the request came through a proxy, trusted or not:
        it carries the user header or one of L{FORWARDING_HEADERS}.
    @ivar with_token: the request carried the security token (set by the API);
        C{named}: its C{user} came from the call's C{user} parameter (the API's)."""

    with_token = named = False

    def __init__(self, user, client, peer, proxied, forwarded):
        self.user, self.client, self.peer, self.proxied = user, client, peer, proxied
        self.forwarded = forwarded

    @property
    def local(self):
        """A direct caller on this machine: its peer is loopback or a UNIX socket
        and it is no proxy. A proxy's request is never local, whatever client it
        names: on the host that runs the sessions, users with shells reach nginx
        too, and nginx forwards them as 127.0.0.1."""
        return not self.forwarded and is_local(self.peer)

    def __repr__(self):
        return (f"<Identity user={self.user!r} client={self.client!r} peer={self.peer!r}"
                f"{' forwarded' if self.forwarded else ''}>")


def forwarded_client(header, trusted):
    """The client named by an C{X-Forwarded-For} value: its last hop that is not a
    trusted proxy (each proxy appends the address it saw), or its first if all are."""
    hops = [hop.strip() for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            address = parse_address(hop)
            return str(address) if address is not None else printable(hop, limit=64)
    return str(parse_address(hops[0])) if hops else None


def check_header_name(name):
    """C{name} lower-cased if it is an HTTP header name; else ValueError."""
    if not name or not set(name) <= _TCHAR:
        raise ValueError(f"{name!r} is not an HTTP header name")
    return name.lower()


# --- decisions -----------------------------------------------------------------------


class Access:
    """Identity and authorization, as configured by the access options.

    @param trusted: L{TrustedProxies} whose user header and X-Forwarded-For count.
    @param user_header: the header naming the user.
    @param groups_file: a L{GroupsFile}, or None.
    @param os_groups: C{(user, group) -> bool}, or None: group membership from the system.
    @param require_group: a group every session needs, or None.
    @param allow_remote_api: reserve and release need neither a local client
        nor the security token.
    @param sites: the L{Sites} whose pages and names may call the API (default: no
        --allowed_host nor --allowed_origin).
    @param admin_group: the group whose members see and act on every session (the
        dashboard, L{is_admin}), or None."""

    def __init__(self, trusted=None, user_header="X-Remote-User", groups_file=None,
                 os_groups=None, require_group=None, allow_remote_api=False, sites=None,
                 admin_group=None):
        self.sites = sites if sites is not None else Sites()
        self.admin_group = admin_group
        self.trusted = trusted if trusted is not None else TrustedProxies()
        self.user_header = check_header_name(user_header)
        self.groups_file, self.os_groups = groups_file, os_groups
        self.require_group, self.allow_remote_api = require_group, allow_remote_api

    @property
    def has_groups(self):
        return self.groups_file is not None or self.os_groups is not None

    def identify(self, peer, headers):
        """The L{Identity} of a request from C{peer} (see L{peer_host}) with
        C{headers} (lower-case names; repeated headers joined with ", ").
        A user header from an untrusted peer is ignored and logged."""
        host = peer_host(peer)
        proxied = host in self.trusted
        claimed = headers.get(self.user_header)
        user = None
        if claimed is not None and not proxied:
            _log.warn("ignored {header}: {user!r} from {peer}: not a trusted proxy "
                      "(--trusted_proxy {trusted})", header=self.user_header,
                      user=printable(claimed, limit=80), peer=printable(host), trusted=self.trusted)
        elif claimed is not None:
            user, problem = check_user(claimed)
            if problem:
                _log.warn("ignored {header} from {peer}: {problem}", header=self.user_header,
                          peer=printable(host), problem=problem)
        forwarded = claimed is not None or any(headers.get(h) is not None for h in FORWARDING_HEADERS)
        return Identity(user, self.client(peer, headers), host, proxied, forwarded)

    def client(self, peer, headers):
        """The client's address: behind a trusted proxy, from its X-Forwarded-For."""
        host = peer_host(peer)
        forwarded = headers.get("x-forwarded-for")
        if forwarded and host in self.trusted:
            return forwarded_client(forwarded, self.trusted) or host
        return host

    def is_member(self, user, group):
        if self.groups_file is not None and user in self.groups_file.members(group):
            return True
        return self.os_groups is not None and bool(self.os_groups(user, group))

    def needed_groups(self, service):
        """The groups a user must be in to use C{service}."""
        return [g for g in (self.require_group, getattr(service, "group", None)) if g]

    def refusal(self, user, service):
        """Why C{user} (None: anonymous) may not use C{service}, or None if they may."""
        for group in self.needed_groups(service):
            if user is None:
                return (f"service {printable(service.name)!r} is for members of group "
                        f"{printable(group)!r}, and the user is unknown")
            if not self.is_member(user, group):
                return f"user {printable(user)!r} is not a member of group {printable(group)!r}"
        return None

    def may_change(self, identity, with_token, remote_api):
        """Whether a call kept from other hosts is accepted (which calls: L{nexusws.api.CALLS}).

        With the security token: always. Without: from a direct local caller
        (L{Identity.local}; never one that came through a proxy); from anywhere
        under C{allow_remote_api} if the call is one it opens (C{remote_api}:
        reserve and release; stop never)."""
        if with_token or identity.local:
            return True
        return self.allow_remote_api and remote_api

    def is_admin(self, identity, token_configured):
        """Whether C{identity} is an administrator, who sees and acts on every session: the
        security token without a C{user} parameter, a direct local caller when no security
        token is configured (as for /v1/stop), or a member of C{admin_group}."""
        if identity.with_token and not identity.named:
            return True
        if identity.local and not token_configured and identity.user is None:
            return True
        return (identity.user is not None and self.admin_group is not None
                and self.is_member(identity.user, self.admin_group))


# --- the options -------------------------------------------------------------------------


class AccessOptions(usage.Options):
    """The access-control options, mixed into L{nexusws.tap.Options}.

    Twisted's parser gathers C{optParameters}, C{optFlags} and C{opt_} methods
    from every base class; C{check_access} (called by C{postOptions}) builds
    C{self["access"]}."""

    optParameters = [
        ["user_header", None, "X-Remote-User",
         "Header naming the authenticated user; believed only from a --trusted_proxy."],
        ["groups_file", None, None,
         'JSON file of groups, {"group": ["user", ...]}; re-read when it changes.'],
        ["require_group", None, None,
         "Group every session reservation and session WebSocket requires (e.g. RemoteSession)."],
        ["admin_group", None, None,
         "Group whose members see every session on /ansys/nexus/admin/ and may end or extend "
         "it (besides callers with the security token, or local ones when there is none)."],
    ]
    optFlags = [
        ["os_groups", None, "Take group membership from the operating system's groups too."],
        ["allow_remote_api", None,
         "Accept /v1/reserve and /v1/release from other hosts without the security token."],
    ]

    def opt_allowed_host(self, value):
        """A name of this gateway that /v1 requests may carry in Host (besides address literals,
        localhost and this host's name; * for any); repeatable."""
        value = value.strip()
        if value != "*" and not HOST_NAME.fullmatch(value) and not is_address_literal(value):
            raise usage.UsageError(f"--allowed_host: {value!r} is not a host name (no port), or *")
        self.setdefault("allowed_host", []).append(value)

    def opt_trusted_proxy(self, value):
        """Proxy whose user header and X-Forwarded-For are believed: an address, a CIDR
        network, unix (UNIX-socket peers) or none; repeatable; default 127.0.0.0/8, ::1
        and unix. Whoever connects from a trusted peer may name any user: on a host with
        other users give unix alone, on sockets only nginx may open (README, Deploying)."""
        # 'none' trusts no proxy at all; the default is DEFAULT_TRUSTED.
        self.setdefault("trusted_proxy", [])
        if value.strip() != "none":
            try:
                self["trusted_proxy"].append(parse_network(value))
            except ValueError as e:
                raise usage.UsageError(f"--trusted_proxy: {e}") from None

    def check_access(self, clock):
        try:
            self["access"] = access_from_options(self, clock)
        except StartupError as e:
            raise usage.UsageError(str(e)) from None


def access_from_options(options, clock):
    """The L{Access} of parsed options (C{trusted_proxy}, C{user_header}, ...).

    @raise StartupError: a bad value or groups file, one line."""
    try:
        proxies = options.get("trusted_proxy")  # [] (--trusted_proxy none): trust no proxy
        trusted = TrustedProxies(DEFAULT_TRUSTED if proxies is None else proxies)
        header = check_header_name(options.get("user_header") or "X-Remote-User")
    except ValueError as e:
        raise StartupError(str(e)) from None
    groups_file = None
    if options.get("groups_file"):
        groups_file = GroupsFile(options["groups_file"], clock)
    os_groups = os_member if options.get("os_groups") else None
    require, admin = (_group_option(options, name, groups_file is None and os_groups is None)
                      for name in ("require_group", "admin_group"))
    hosts = list(options.get("allowed_host") or ())
    advertised = options.get("advertise_url")
    if advertised:  # the name the balancer and clients are told is one of ours
        hosts.append(urlsplit(advertised).hostname or "")
    sites = Sites(hosts, options.get("allowed_origin") or ())
    return Access(trusted, header, groups_file, os_groups, require,
                  bool(options.get("allow_remote_api")), sites, admin)


def _group_option(options, name, no_groups):
    """The group of option C{name} (stripped), or None; StartupError if empty, or if there
    is no source of groups (C{no_groups}): nobody would be a member."""
    group = options.get(name)
    if group is None:
        return None
    group = group.strip()
    if not group:
        raise StartupError(f"--{name}: the group name is empty")
    if no_groups:
        raise StartupError(f"--{name} needs --groups_file or --os_groups: without them nobody is a member")
    return group


# --- start-up notes ----------------------------------------------------------------------


def _trusts_loopback(trusted):
    loopback = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    return any(n != UNIX and n.version == net.version and n.overlaps(net)
               for n in trusted.networks for net in loopback)


def access_notes(access, services, http_listen, security_token, inherited=None):
    """Start-up warnings about the access configuration.

    Besides a /v1 API open to other hosts and group services nobody can use:
    an HTTP listener that local users can connect to while it trusts their
    side of it as a proxy (loopback on a TCP listener, a UNIX socket others
    may open), for then any local user can name any user."""
    notes = []
    bound = listener_address(http_listen, inherited) if http_listen is not None else None
    if bound is not None and bound[0] == "tcp" and _trusts_loopback(access.trusted) and (
            bound[1] in ("", "localhost", "0.0.0.0", "::") or is_local(bound[1])):
        notes.append(f"--http_listen {http_listen} is TCP and --trusted_proxy trusts loopback "
                     f"({access.trusted}): every local user can connect and name any user in "
                     f"{access.user_header}; on a host with other users, listen on UNIX sockets only "
                     "nginx may open and give --trusted_proxy unix (README: Deploying)")
    if (bound is not None and bound[0] == UNIX and UNIX in access.trusted
            and (bound[2] is None or bound[2] & 0o002)):
        mode = "unknown" if bound[2] is None else f"{bound[2]:03o}"
        notes.append(f"--http_listen {http_listen} is a UNIX socket every local user may open "
                     f"(mode {mode}) and --trusted_proxy trusts UNIX sockets: any of them can name "
                     f"any user in {access.user_header}; give it mode 0660 and nginx's group "
                     "(SocketMode=, SocketGroup=; unix:PATH:mode=660)")
    if http_listen is not None and not security_token and not listener_is_local(http_listen):
        open_calls = "reserve and release are open to them (--allow_remote_api)" if (
            access.allow_remote_api) else "reserve, release and stop are refused to them"
        notes.append(f"the /v1 API on --http_listen {http_listen} is reachable from other hosts "
                     f"and there is no --security_token: /v1/status is open to them, {open_calls}")
    if access.admin_group and not (access.groups_file is not None and access.groups_file.members(
            access.admin_group)) and not (access.os_groups is not None and os_group_exists(access.admin_group)):
        where = " or ".join(name for name, given in (("--groups_file", access.groups_file is not None),
                                                    ("the system's groups", access.os_groups is not None)) if given)
        notes.append(f"--admin_group {access.admin_group!r} has no member in {where}: only the "
                     "operator (the security token, or a local caller without one) is an administrator")
    if not access.has_groups:
        for service in services:
            if getattr(service, "group", None):
                notes.append(f"service {service.name!r} is for group {service.group!r} but there "
                             f"is no --groups_file or --os_groups: nobody can use it")
    return notes
