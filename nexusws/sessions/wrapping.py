"""How a program is put in a session of its own: the command the launcher runs.

On Linux a supervisor (L{nexusws.sessions.supervisor}) starts the program: it
reads L{supervisor_command} on its stdin. Elsewhere, or when not supervising,
the program runs under util-linux's C{setsid} (and C{prlimit}) or, without them,
under L{SETSID_WRAPPER}: L{wrap} gives that command line. L{check_executable}
refuses a program that cannot be run before anything is started.
"""

import errno
import json
import os
import shutil
import sys

from nexusws.sessions import procs as _procs

#: Puts the program in a new session, whose id (and group id) is its pid, which
#: exec keeps, with the open-files limit the gateway started with. A program
#: that cannot be executed exits with 127, as in a shell.
SETSID_WRAPPER = (
    "import os,sys\n"
    "os.setsid()\n"
    "n=os.environ.pop('NEXUSWS_CHILD_NOFILE',None)\n"  # procs.raise_open_files_limit
    "if n:\n"
    "    import resource as r;h=r.getrlimit(r.RLIMIT_NOFILE)[1];r.setrlimit(r.RLIMIT_NOFILE,(int(n),h))\n"
    "try:\n"
    "    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "except OSError as e:\n"
    "    sys.stderr.write(f'cannot execute {sys.argv[1]}: {e.strerror}\\n')\n"
    "    os._exit(127)\n"
)

#: util-linux's setsid and prlimit (on every Debian system) do what
#: SETSID_WRAPPER does in 2 ms instead of the 12 an interpreter takes to start.
SETSID, PRLIMIT = shutil.which("setsid"), shutil.which("prlimit")


def wrap(argv, env):
    """The command line that runs C{argv} in its own session (see L{SETSID_WRAPPER})."""
    nofile = _procs.child_nofile
    if SETSID and (nofile is None or PRLIMIT):
        limit = [] if nofile is None else [PRLIMIT, f"--nofile={nofile}:", "--"]
        return [SETSID, "--", *limit, *argv]
    if nofile is not None:
        env[_procs.CHILD_NOFILE_ENV] = str(nofile)
    return [sys.executable, "-c", SETSID_WRAPPER, *argv]


#: The supervisor program (see L{nexusws.sessions.launcher.Launcher}); Linux only (prctl, /proc).
SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "supervisor.py")
SUPERVISE = sys.platform.startswith("linux")


def supervisor_command(argv, env, cwd, relay=False):
    """What a supervisor reads on its stdin to start C{argv} (see L{nexusws.sessions.supervisor});
    with C{relay}, it relays the program's output (which then never meets a broken pipe)."""
    command = {"argv": argv, "env": env, "cwd": os.getcwd() if cwd is None else cwd,
               "nofile": _procs.child_nofile}
    if relay:
        command["relay"] = True
    # ensure_ascii: text that is not UTF-8 (surrogate escapes) travels as \\udcXX and
    # reaches the exec as the same bytes.
    return json.dumps(command).encode("ascii")


def check_executable(program, env, cwd):
    """@raise FileNotFoundError: C{program} is not an executable file (looked up on C{env}'s PATH)."""
    if os.sep in program:
        path = program if os.path.isabs(program) or cwd is None else os.path.join(cwd, program)
        found = os.path.isfile(path) and os.access(path, os.X_OK)
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath)) is not None
    if not found:
        raise FileNotFoundError(errno.ENOENT, "no such executable program", program)
