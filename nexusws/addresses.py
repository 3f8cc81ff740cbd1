"""Reading addresses: of a request's peer, of a network, of a listener endpoint.

Pure parsing, no policy: L{parse_address} and L{parse_network} (an IPv4-mapped
IPv6 address counts as its IPv4 one), L{peer_host} (an Autobahn peer string or
a Twisted address; L{UNIX} for a UNIX socket), L{is_local} (loopback or a UNIX
socket), and what a listener endpoint string (C{--http_listen}...) listens on
(L{listener_address}, L{listener_is_local}). Who is trusted, and what a
caller may do, is L{nexusws.auth}'s.
"""

import functools
import ipaddress
import os
import socket

from twisted.internet.address import UNIXAddress
from twisted.python.systemd import ListenFDs

#: The peer of a UNIX-socket connection (it has no address).
UNIX = "unix"


# --- peers and networks -------------------------------------------------------------


def parse_address(text):
    """C{text} as an C{ipaddress} address (IPv4-mapped IPv6 as IPv4), or None."""
    return _parse_address(str(text))


@functools.lru_cache(maxsize=4096)  # a request asks twice, and clients come back
def _parse_address(text):
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text.partition("%")[0])  # no zone: it is local to a host
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def parse_network(text):
    """One C{--trusted_proxy} value: an address, a CIDR network, or C{unix}.

    @raise ValueError: a one-line reason."""
    text = text.strip()
    if text == UNIX:
        return UNIX
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address, a CIDR network (10.0.0.0/8) "
                         f"or 'unix'") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:  # ::ffff:10.0.0.1 means 10.0.0.1, as parse_address sees it
            return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


def peer_host(peer):
    """The host of a peer: an Autobahn C{request.peer} (C{tcp4:1.2.3.4:5678},
    C{tcp6:::1:5678}, C{unix:...}) or a Twisted address; C{unix} for a UNIX socket."""
    if peer is None:
        return ""
    if isinstance(peer, UNIXAddress):
        return UNIX
    if not isinstance(peer, str):
        return str(getattr(peer, "host", None) or "")
    kind, _, rest = peer.partition(":")
    if kind in ("tcp4", "tcp6"):
        return rest.rpartition(":")[0]
    if kind == UNIX:
        return UNIX
    return peer


def is_local(host):
    """Whether C{host} (a L{peer_host}, or a client address) is this machine."""
    if host == UNIX:
        return True
    address = parse_address(host)
    return address is not None and address.is_loopback


# --- listeners ----------------------------------------------------------------------


def split_endpoint(description):
    """An endpoint string's parts, split on unescaped colons and unescaped."""
    parts, current, chars = [], [], iter(description)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    return parts + ["".join(current)]


def _endpoint_args(description):
    kind, *args = split_endpoint(description)
    return kind, [a for a in args if "=" not in a], dict(a.partition("=")[::2] for a in args if "=" in a)


def listener_is_local(description, inherited=None):
    """Whether a listener endpoint string accepts connections from this host only
    (a UNIX socket, or TCP bound to a loopback interface; for C{systemd:...},
    the socket systemd passed, looked up in C{inherited}, default: this
    process's L{ListenFDs}). Other kinds count as reachable from other hosts."""
    bound = listener_address(description, inherited)
    return bound is not None and (bound[0] == UNIX or bound[1] == "localhost" or is_local(bound[1]))


def listener_address(description, inherited=None):
    """What a listener endpoint string listens on: C{("unix", path, mode)} for a
    UNIX socket (mode: its permission bits, None if unknown; path None if unknown
    or abstract), C{("tcp", interface)} for TCP (C{""}: every interface), or None
    if unknown. C{systemd:...} is the socket systemd passed, looked up in
    C{inherited} (default: this process's L{ListenFDs})."""
    kind, positional, named = _endpoint_args(description)
    if kind == UNIX:
        try:
            mode = int(named.get("mode", "666"), 8)  # Twisted's default
        except ValueError:
            mode = None
        return UNIX, named.get("address", (positional or [None])[0]), mode
    if kind == "systemd":
        return _inherited_address(named, inherited or ListenFDs.fromEnvironment())
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    return "tcp", named.get("interface", positional[2] if kind != "ssl" and len(positional) > 2 else "")


def _inherited_address(named, inherited):
    try:
        fd = (inherited.inheritedNamedDescriptors()[named["name"]] if "name" in named
              else inherited.inheritedDescriptors()[int(named.get("index", ""))])
        with socket.socket(fileno=os.dup(fd)) as listening:
            address = listening.getsockname()
            family = listening.family
    except (KeyError, IndexError, ValueError, OSError):
        return None
    if family != socket.AF_UNIX:
        return "tcp", address[0]
    if not address or isinstance(address, bytes) or address.startswith("\0"):
        return UNIX, None, 0o777  # abstract: no file, no permissions, anyone may connect
    try:
        return UNIX, address, os.stat(address).st_mode & 0o777
    except OSError:
        return UNIX, address, None
