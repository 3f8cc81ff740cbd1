"""The script API of a service whose sessions run as Slurm jobs: L{SlurmScript} (issue 16).

A service whose script subclasses L{SlurmScript} (not C{RemoteServiceScript})
runs each instance as a batch job (L{nexusws.sessions.slurm}): nexusws submits
it with C{sbatch}; on the node Slurm gives it, the job starts the script's
programs, picks a free port and reports where it listens through a connection
file (L{nexusws.sessions.slurmjob}); nexusws tunnels the session's WebSocket
there, shows the page what the queue does meanwhile, and cancels the job when
the session ends. Scripts import it from L{nexusws.services}. EnSight on a GPU
node, complete::

    from nexusws.services import SlurmScript

    class EnSightOnGPU(SlurmScript):
        def job(self, index, options):
            return {"programs": [["/ansys_inc/bin/ensight", "-X", "-vnc", "vnc://?rfb_port={port}"]]}

with C{"options": {"sbatch": ["--partition=gpu", "--gpus=1", "--time=120"]}}.

The service's options nexusws reads (L{check_options}), besides its own
(C{group}, C{reconnect_grace}, the limits):
  sbatch          sbatch's arguments, a list of strings, never through a shell
                  (partition, time, CPUs, GPUs, account...); nexusws adds its own after
                  them: --job-name, --comment, --export=NONE, --output, --chdir
  connection_dir  the directory the jobs write their reports to: shared by the
                  gateway's host and the nodes, the gateway user's, writable by no
                  one else (default: ~/.nexusws/slurm of the gateway's user)
  python          the job script's interpreter on the nodes (default /usr/bin/python3)
  poll_interval   seconds between squeue calls (default 2; backs off to 30 while nothing changes)
  queue_timeout   seconds a job may wait in the queue before the start fails (0, the
                  default: as long as Slurm keeps it); --start_timeout counts from its start
  host            the address the gateway reaches a job at (default: Slurm's node name)
"""

import os
import re

__all__ = ["SlurmScript", "check_options", "job_parameters"]

#: The default interpreter of the job script on the nodes.
PYTHON = "/usr/bin/python3"

_SCREEN = re.compile(r"^\d{2,5}x\d{2,5}x\d{1,2}$")

#: What L{SlurmScript.job} may give, and what each must be.
JOB_KEYS = {"programs": "a list of argument lists", "xvfb": "a screen as WxHxD", "password": "true or false",
            "ready_timeout": "a number of seconds", "host": "a host name"}


class SlurmScript:
    """Base class of a Slurm service's script; see the module docstring.

    nexusws creates it as C{cls(common_options)}, as it does a C{RemoteServiceScript}.
    """

    def __init__(self, common_options):
        self._common_options = common_options

    def sbatch_arguments(self, index, options):
        """C{sbatch}'s arguments for instance C{index}'s job: the C{sbatch} option by default.

        @param options: the reservation's options (str values), with C{user} when known.
        """
        return list(self._common_options.get("sbatch") or [])

    def job(self, index, options):
        """What instance C{index}'s job runs; override this. A dict:

          programs       argument lists; the first is the program that listens on C{{port}}
                         (started first), the others run beside it (a window manager).
                         C{{port}}, C{{host}}, C{{display}}, C{{password_file}}, C{{user}}
                         and C{{dir}} (a private directory) are put in.
          xvfb           C{"WxHxD"}: an Xvfb is started first (C{{display}}, with a fresh cookie)
          password       True: a one-time VNC password in C{{password_file}} (as x11vnc's
                         C{-passwdfile rm:FILE} takes it), given to the session's page
          ready_timeout  seconds from the job's start to its port accepting (default 60)
          host           the address the job reports (default: the C{host} option, else
                         Slurm's node name); the program must listen there

        A C{ValueError} (a size not offered) fails the start with its message.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement job()")


#: sbatch's options nexusws sets itself (after the service's), or that would break its job:
#: long form -> short form (or None).
OWN_OPTIONS = {"--job-name": "-J", "--comment": None, "--export": None, "--output": "-o", "--chdir": "-D",
               "--parsable": None, "--wrap": None, "--array": "-a", "--no-requeue": None, "--requeue": None,
               "--wait": "-W", "--hold": "-H", "--test-only": None}

#: sbatch's short options that take no value: in a group (C{-vW}) the next letter is another option.
FLAGS = set("hHIkOQsuvVW")


def own_option(argument):
    """The option of L{OWN_OPTIONS} that C{argument} gives, or None. sbatch takes any
    unambiguous start of a long option (C{--wra=...} is C{--wrap}): a start counts."""
    if argument.startswith("--"):
        name = argument[2:].split("=", 1)[0]
        for long in OWN_OPTIONS:
            if len(name) >= 2 and long[2:].startswith(name):
                return long
        return None
    shorts = {short[1]: long for long, short in OWN_OPTIONS.items() if short}
    for letter in argument[1:] if argument.startswith("-") else "":  # grouped: -vJx is -v -J x
        if letter in shorts:
            return shorts[letter]
        if letter not in FLAGS:
            return None  # a letter that takes a value: the rest is its value
    return None


def check_options(options):
    """The problem with a Slurm service's C{options} (one line naming the key), or None."""
    sbatch = options.get("sbatch", [])
    if not isinstance(sbatch, list) or not all(isinstance(a, str) and "\0" not in a for a in sbatch):
        return "'options.sbatch' must be a list of strings (sbatch's arguments)"
    taken = next((own_option(a) for a in sbatch if own_option(a)), None)
    if taken is not None:
        return (f"'options.sbatch': {taken} is nexusws's own, or a session's job cannot work with it "
                f"(see the README's Sessions on a Slurm cluster)")
    for key in ("connection_dir", "python", "host"):
        value = options.get(key)
        if key in options and (not isinstance(value, str) or not value.strip() or "\0" in value):
            return f"'options.{key}' must be a non-empty string"
    python = options.get("python", PYTHON)
    if not os.path.isabs(python):
        return f"'options.python' must be an absolute path (the #! line of the job script), not {python!r}"
    for key, low in (("poll_interval", 0.1), ("queue_timeout", 0)):
        value = options.get(key)
        if key in options and (isinstance(value, bool) or not isinstance(value, (int, float))
                               or not low <= value < 10 ** 7):
            return f"'options.{key}' must be a number of seconds >= {low:g}"
    return None


def job_parameters(spec, options, secret, host, connection_dir):
    """The job script's parameters (L{nexusws.sessions.slurmjob}) from what L{SlurmScript.job}
    gave (C{spec}), checked, with the reservation's user, the job's secret, the service's
    C{host} option and its connection directory.

    @raise TypeError: C{spec} is not what L{SlurmScript.job} must give (the script's bug).
    """
    if not isinstance(spec, dict):
        raise TypeError(f"job() gave {type(spec).__name__}, not a dict")
    unknown = sorted(set(spec) - set(JOB_KEYS))
    if unknown:
        raise TypeError(f"job() gave an unknown key {unknown[0]!r}")
    programs = spec.get("programs")
    if (not isinstance(programs, list) or not programs or not all(
            isinstance(p, list) and p and all(isinstance(a, str) for a in p) for p in programs)):
        raise TypeError("job()'s 'programs' must be a non-empty list of non-empty argument lists")
    screen = spec.get("xvfb")
    if screen is not None and (not isinstance(screen, str) or not _SCREEN.match(screen)):
        raise TypeError(f"job()'s 'xvfb' must be {JOB_KEYS['xvfb']}, not {screen!r}")
    ready = spec.get("ready_timeout", 60)
    if isinstance(ready, bool) or not isinstance(ready, (int, float)) or not 0 < ready < 10 ** 6:
        raise TypeError(f"job()'s 'ready_timeout' must be {JOB_KEYS['ready_timeout']}, not {ready!r}")
    return {"programs": programs, "xvfb": screen, "password": bool(spec.get("password")),
            "ready_timeout": float(ready), "host": spec.get("host") or host, "user": options.get("user") or "",
            "secret": secret, "connection_dir": connection_dir}
