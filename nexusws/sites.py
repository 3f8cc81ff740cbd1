"""Which names the gateway answers to, and which web pages may call its API.

L{Sites} judges a request's C{Host}, C{Origin} and C{Sec-Fetch-Site} headers
against C{--allowed_host} and C{--allowed_origin} (whose patterns are
L{nexusws.limits.OriginPolicy}'s): a cross-site page or a DNS-rebound name is
refused. L{split_host}, L{is_address_literal} and L{HOST_NAME} read those names.
"""

import ipaddress
import re
import socket

from nexusws.limits import OriginPolicy, parse_origin
from nexusws.logs import printable

#: A host name as --allowed_host takes it (no port).
HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
_HOST = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(?::(\d{1,5}))?")


def split_host(value):
    """A C{Host} header as C{(name, port)}: name lower-cased without a final dot
    (an IPv6 literal keeps its brackets), port an int or None; None if malformed."""
    m = _HOST.fullmatch(value.strip())
    if m is None:
        return None
    return m[1].lower().rstrip("."), int(m[2]) if m[2] else None


def is_address_literal(name):
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


def default_host_names():
    """The names a gateway answers to without --allowed_host: localhost and this host's name."""
    names = {"localhost", socket.gethostname().lower()}
    return {n for n in names if n}


class Sites:
    """Which names the gateway answers to, and which web pages may call its API.

    A browser says which page a request comes from: C{Sec-Fetch-Site} on every
    request of a current browser, C{Origin} on cross-origin fetches. A page on
    another site must not drive the API of a gateway its user can reach (an
    C{<img src=".../v1/stop">}, a fetch of /v1/status from a loopback-trusted
    browser): a request marked C{cross-site}, or whose C{Origin} is neither the
    gateway's own (the name and port it was sent to) nor on C{--allowed_origin},
    is refused. DNS rebinding (a name of the attacker's, made to resolve to the
    gateway) is same-origin to the browser, but the request's C{Host} then
    names the attacker's domain: a C{Host} that is neither an address literal
    nor one of the gateway's names (C{--allowed_host}, plus localhost and this
    host's name; C{*}: any) is refused. curl, the Nexus server and the
    balancer send no C{Origin} nor C{Sec-Fetch-Site}.

    @param hosts: the --allowed_host names (None: none given).
    @param origins: the --allowed_origin patterns (an L{nexusws.limits.OriginPolicy}'s).
    """

    def __init__(self, hosts=None, origins=()):
        hosts = [h.strip().lower().rstrip(".") for h in hosts or ()]
        self.any_host = "*" in hosts
        self.hosts = default_host_names() | {h for h in hosts if h and h != "*"}
        self.origins = OriginPolicy(origins)

    def refusal(self, host, origin, fetch_site):
        """Why a request with these headers (str, or None when absent) is refused, or None."""
        named = split_host(host) if host else ("", None)
        if named is None:
            return f"malformed Host {printable(host, limit=80)!r}"
        name, port = named
        if name and not self.any_host and name not in self.hosts and not is_address_literal(name):
            return (f"Host {printable(name, limit=80)!r} is not a name of this gateway "
                    "(--allowed_host; a DNS rebinding attempt?)")
        listed = same = False
        if origin:
            try:
                parsed = parse_origin(origin)
            except ValueError:
                parsed = None
            listed = parsed is not None and bool(self.origins.patterns) and any(
                p.matches(parsed) for p in self.origins.patterns)
            same = (parsed is not None and parsed != "null" and parsed[1] == name
                    and (port is None or parsed[2] == port))
            if not (same or listed):
                return (f"a page of origin {printable(origin, limit=100)!r} may not call the API "
                        "(--allowed_origin)")
        # A page of another port of this host, or of a sibling domain, is "same-site"
        # but no origin of ours, and an <img> sends no Origin: only the gateway's own
        # pages (same-origin) and typed-in addresses (none) need no Origin.
        site = fetch_site.strip().lower() if fetch_site else None
        if site not in (None, "none", "same-origin") and not (same or listed):
            return f"a {printable(site, limit=40)} request (Sec-Fetch-Site) may not call the API"
        return None
