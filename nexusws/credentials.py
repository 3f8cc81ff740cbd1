"""The REST API's security token: where it comes from, and keeping it from session programs.

The token is given once: C{--security_token}, C{--security_token_file FILE}
(read once at start-up, surrounding white space stripped; under systemd
C{LoadCredential=token:...} with C{--security_token_file
${CREDENTIALS_DIRECTORY}/token}) or the C{WEBSOCKETSERVER_SECURITY_TOKEN}
variable. The variable is taken out of the gateway's environment as soon as
it is read, before any service script is loaded, so nothing the gateway or a
script starts, by whatever means (the launcher, C{subprocess}, a shell),
inherits it.

The kernel still shows the environment the gateway started with in
C{/proc/PID/environ}, to every process of the same user -- session programs
included -- for as long as the process is I{dumpable}; so do
C{/proc/PID/mem} and ptrace. A gateway makes itself not dumpable at start-up
(L{set_dumpable}, C{PR_SET_DUMPABLE} 0: also no core dumps); C{--dumpable}
leaves it dumpable, for a debugger or py-spy. Its children are dumpable as
usual (the flag is reset when a program is executed).

L{TokenCheck} tells whether a request carries it (L{presented_token}: the query
parameter or a Bearer header), for the /v1 API.
"""

import ctypes
import hashlib
import hmac
import os

from nexusws.errors import StartupError

SECURITY_TOKEN_ENV = "WEBSOCKETSERVER_SECURITY_TOKEN"

#: A token file longer than this is not a token.
MAX_TOKEN_FILE = 4096

PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4


def security_token(option, path, environ):
    """The security token, or None, from C{--security_token} (C{option}),
    C{--security_token_file} (C{path}) and C{environ}, whose
    C{WEBSOCKETSERVER_SECURITY_TOKEN} is removed whatever the outcome.

    @raise StartupError: (one line naming the file) the file is given together
        with another source, cannot be read, is empty or is not one line of text.
    """
    from_env = environ.pop(SECURITY_TOKEN_ENV, None) or None
    if path is None:
        return option if option is not None else from_env
    if option is not None or from_env is not None:
        other = "--security_token" if option is not None else SECURITY_TOKEN_ENV
        raise StartupError(f"--security_token_file {path!r}: give the token once, not also with {other}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_FILE + 1)
    except OSError as e:
        raise StartupError(f"--security_token_file {path!r}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_TOKEN_FILE:
        raise StartupError(f"--security_token_file {path!r}: longer than {MAX_TOKEN_FILE} bytes")
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise StartupError(f"--security_token_file {path!r}: not UTF-8 text") from None
    if not token:
        raise StartupError(f"--security_token_file {path!r}: empty")
    if len(token.splitlines()) > 1:
        raise StartupError(f"--security_token_file {path!r}: more than one line")
    return token


def _prctl(option, value=0):
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.prctl(option, value, 0, 0, 0)
    if result < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return result


def set_dumpable(flag):
    """Make this process dumpable (C{flag} true) or not; return None, or why it
    cannot be done (one line)."""
    try:
        _prctl(PR_SET_DUMPABLE, 1 if flag else 0)
    except AttributeError:
        return "prctl() is not available on this system"
    except OSError as e:
        return f"prctl(PR_SET_DUMPABLE) failed: {e.strerror}"
    return None


def is_dumpable():
    """Whether this process is dumpable (Linux)."""
    return _prctl(PR_GET_DUMPABLE) == 1


def presented_token(request):
    """The security token a twisted.web C{request} carries (bytes), from the query or a
    Bearer header. The query parameter wins when both are present."""
    values = request.args.get(b"security_token")
    if values:
        return values[0]
    scheme, _, credentials = (request.getHeader(b"authorization") or b"").strip().partition(b" ")
    if scheme.lower() == b"bearer" and credentials.strip():
        return credentials.strip()
    return None


class TokenCheck:
    """Whether a request carries the security token C{token} (None or empty: none is required).

    Comparing fixed-length digests (C{hmac.compare_digest}) keeps the comparison's time
    independent of the token's length as well as of its content."""

    def __init__(self, token):
        self._digest = hashlib.sha256(token.encode("utf-8")).digest() if token else None

    @property
    def required(self):
        return self._digest is not None

    def carried_by(self, request):
        offered = presented_token(request)
        return offered is not None and hmac.compare_digest(hashlib.sha256(offered).digest(), self._digest)
