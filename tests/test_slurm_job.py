"""The program inside a Slurm session's job (nexusws.sessions.slurmjob), its parts on this host:
placeholders put in once, and a port another user bound first is never reported."""

import os
import shutil
import socket
import subprocess
import sys

from nexusws.sessions import slurmjob


def job(**params):
    made = slurmjob.Job({"programs": [["true"]], "connection_dir": "/nonexistent", "secret": "s", **params}, "7")
    return made


def test_placeholders_are_put_in_in_one_pass_so_a_value_is_never_expanded_again():
    made = job(user="{dir}{port}", host="127.0.0.1")
    try:
        made.values["port"] = "5901"
        assert made._fill("ab{user}:{port}") == "ab{dir}{port}:5901"
        assert made._fill("{host}/{user}") == "127.0.0.1/{dir}{port}"
        assert made._fill("{nothing} stays") == "{nothing} stays"
    finally:
        shutil.rmtree(made.private)


def test_a_placeholder_the_job_has_no_value_for_is_an_error_naming_it():
    made = job()
    try:
        try:
            made._fill("-display {display}")
            raise AssertionError("no display, no error")
        except slurmjob.JobError as e:
            assert str(e) == "{display} in a program's arguments, but the job has none"
    finally:
        shutil.rmtree(made.private)


def test_a_listener_of_the_jobs_own_processes_is_its_own_and_another_processs_is_not(monkeypatch):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        inodes = slurmjob.listeners(port)
        assert inodes and inodes <= slurmjob.socket_inodes(slurmjob.descendants(os.getpid()))[0]
        made = job(host="127.0.0.1")
        other = subprocess.Popen(["sleep", "30"])  # no ancestor of this process, which listens
        try:
            assert made._taken_by_another(port) is None, "this process (the 'job') holds it"
            monkeypatch.setattr(slurmjob.os, "getpid", lambda: other.pid)  # the job is now 'sleep'
            assert made._taken_by_another(port) == (
                f"port {port} on 127.0.0.1 is held by a process that is not this job's "
                f"(another user of the node bound it first); not reporting it")
        finally:
            monkeypatch.undo()
            other.kill()
            other.wait()
            shutil.rmtree(made.private)
    assert slurmjob.listeners(port) == set(), "nothing listens there any more"


def test_a_listener_of_another_beside_the_jobs_own_on_the_same_port_is_refused_too(monkeypatch):
    """A program that binds [::]:P (v6 only) and 0.0.0.0:P on its own: a node user who took
    127.0.0.1:P in between would answer connections to 127.0.0.1:P. Every listener must be the job's."""
    with socket.socket(socket.AF_INET6) as ours:
        ours.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        ours.bind(("::1", 0))
        ours.listen(1)
        port = ours.getsockname()[1]
        other = subprocess.Popen([sys.executable, "-c", (
            "import socket, sys, time\n"
            f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(1)\n"
            "print('bound', flush=True); time.sleep(30)\n")], stdout=subprocess.PIPE, text=True,
            start_new_session=True)
        made = job(host="127.0.0.1")
        try:
            assert other.stdout.readline() == "bound\n"
            # The job is this process alone: the other (its child here) stands for another user's.
            monkeypatch.setattr(slurmjob, "descendants", lambda root: {os.getpid()})
            assert "is held by a process that is not this job's" in made._taken_by_another(port)
            monkeypatch.setattr(slurmjob, "descendants", lambda root: {os.getpid(), other.pid})
            assert made._taken_by_another(port) is None, "both are the job's"
        finally:
            other.kill()
            other.wait()
            shutil.rmtree(made.private)
