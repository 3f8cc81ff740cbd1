"""A Slurm job's report, the connection file, and the directory it is written to (issue 16).

The program in a session's job (L{nexusws.sessions.slurmjob}) writes
C{<connection_dir>/<job id>.json} once its port accepts: its host, port,
one-time password and the per-job secret the gateway gave it.
L{read_connection_file} checks it before the gateway believes it;
L{connection_directory} checks (and makes) the directory at start-up.
"""

import errno
import hmac
import json
import os
import stat

from nexusws.logs import printable

#: The largest connection file read (a job's report is a few dozen bytes).
MAX_REPORT = 64 * 1024

class ReportError(Exception):
    """A connection file that cannot be believed, or one that reports the job's failure; one line.

    @ivar foreign: it is another job's (its job id or secret differs): a stale one, not this job's word."""

    foreign = False


def read_connection_file(path, job_id, secret):
    """The report of job C{job_id} in C{path}: C{{"host", "port", "password"}}.

    Believed only if it is a regular file (not a link) of this process's user that no one
    else may read or write, of at most L{MAX_REPORT} bytes of JSON naming C{job_id} and
    carrying C{secret}.

    @raise FileNotFoundError: not written yet.
    @raise ReportError: anything else wrong with it, or the job's own C{"error"}.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise
        raise ReportError(f"connection file {path}: {e.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ReportError(f"connection file {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise ReportError(f"connection file {path} is not the gateway user's alone "
                              f"(owner {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o})")
        raw = f.read(MAX_REPORT + 1)
    try:
        report = json.loads(raw[:MAX_REPORT].decode("utf-8")) if len(raw) <= MAX_REPORT else None
    except (UnicodeDecodeError, ValueError):
        report = None
    if not isinstance(report, dict):
        raise ReportError(f"connection file {path} is not a JSON object of at most {MAX_REPORT} bytes")
    given = str(report.get("secret", "")).encode("utf-8", "surrogatepass")
    if report.get("job") != str(job_id) or not hmac.compare_digest(given, secret.encode()):
        error = ReportError(f"connection file {path} is not job {job_id}'s (its job id or secret differs)")
        error.foreign = True
        raise error
    if "error" in report:
        raise ReportError(printable(str(report["error"]), limit=500))
    host, port, password = report.get("host"), report.get("port"), report.get("password")
    if not isinstance(host, str) or not host or any(c.isspace() for c in host):
        raise ReportError(f"connection file {path}: 'host' is not a host name")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ReportError(f"connection file {path}: 'port' is not a port number")
    if password is not None and not isinstance(password, str):
        raise ReportError(f"connection file {path}: 'password' is not a string")
    return {"host": host, "port": port, "password": password}


def connection_directory(path=None):
    """The connection directory C{path} (default C{~/.nexusws/slurm}), made (mode 0700) if absent.

    @raise ValueError: it is unfit: not a directory, not this user's, writable by others.
    """
    if path is None:
        home = os.path.expanduser("~")
        if home == "~" or not os.path.isabs(home):
            raise ValueError("the gateway's user has no home directory: give a directory shared with the nodes")
        path = os.path.join(home, ".nexusws", "slurm")
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"{path} is not a directory")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
    except OSError as e:
        raise ValueError(f"cannot create {path}: {e.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise ValueError(f"{path} is not the gateway user's (owner uid {info.st_uid})")
    if info.st_mode & 0o022:
        raise ValueError(f"{path} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}): "
                         f"anyone could forge a job's report")
    return path
