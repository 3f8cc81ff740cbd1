"""The Slurm backend end to end (issue 16): a real gateway, the suite's real one-node Slurm
(tests/slurm/up.sh), real jobs, Python websockets. Every test stops its gateways with SIGTERM
(a SIGKILL leaves jobs, which is what the restart test is about) and the C{slurm} fixture
fails it if any job is left."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import websockets

from nexusws.sessions.slurmsite import job_name
from support.sessions import (
    SCRIPTS,
    closed_with,
    echo,
    gateway_args,
    get,
    marked,
    open_ws,
    reserve,
    run,
    session_url,
    state_path,
)
from support.slurm import desktop_config, our_jobs, program_config
from support.sse import Reader

ECHO = str(SCRIPTS / "echo_server.py")


def echo_programs(marker):
    return [[sys.executable, ECHO, "{port}", marker, "--hello"]]


def wait_until(condition, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


async def first_bytes(url, size):
    async with open_ws(url) as ws:
        got = b""
        while len(got) < size:
            got += await asyncio.wait_for(ws.recv(), 30)
        return got


async def first_line(url):
    async with open_ws(url) as ws:
        got = b""
        while b"\n" not in got:
            got += await asyncio.wait_for(ws.recv(), 30)
        return got.split(b"\n")[0]


async def closed_on(url):
    """Open C{url} and wait for the server's close frame: C{(code, reason)}."""
    async with open_ws(url) as ws:
        return await closed_with(ws)


def test_a_cluster_desktop_is_a_job_whose_x11vnc_greets_through_the_websocket_and_ends_with_it(
        slurm, gateway, tmp_path):
    gw = gateway(gateway_args(tmp_path, config=desktop_config(tmp_path)), http=True)
    token = reserve(gw, "Cluster Desktop")
    assert run(first_bytes(session_url(gw, token), 12)) == b"RFB 003.008\n"
    # The WebSocket closed (grace 0): the job is cancelled, Slurm says it ended, its files are gone.
    wait_until(lambda: not our_jobs(slurm, tmp_path), "the job to end")
    gw.wait_for(r"Cluster Desktop#0: stopping -> released")
    assert os.listdir(tmp_path / "jobs") == []
    name, comment = job_name(str(state_path(tmp_path))), None
    for line in slurm.run("squeue", "-h", "-t", "all", f"--name={name}", "-O", "JobID:|,Comment:|").splitlines():
        comment = line.split("|")[1]
    assert comment and comment.startswith("nexusws ") and token not in comment, comment
    assert token not in gw.log.replace("***", "")
    gw.stop()


def test_a_job_waiting_for_resources_is_shown_as_queued_and_starts_when_the_node_frees(
        slurm, gateway, tmp_path, marker):
    blocker = slurm.submit("--exclusive", "--output=/dev/null", "--wrap", "sleep 300")
    try:
        wait_until(lambda: slurm.jobs().get(blocker, ("", ""))[1] == "RUNNING", "the exclusive job to run")
        gw = gateway(gateway_args(tmp_path, "--start_timeout", "5",
                                  config=program_config(tmp_path, echo_programs(marker))), http=True)
        token = reserve(gw, "job")
        events = Reader(f"{gw.http_url}/v1/events/{token}")

        async def session():
            async with open_ws(session_url(gw, token)) as ws:
                queued = await asyncio.to_thread(wait_until, lambda: [
                    e for e in events.events if e["data"].get("queue", {}).get("reason") == "Resources"],
                    "a progress event saying Resources")
                # Queued longer than --start_timeout (5 s): the wait in the queue does not count.
                await asyncio.sleep(6)
                assert ws.state is websockets.protocol.State.OPEN
                slurm.run("scancel", blocker)
                line = await asyncio.wait_for(ws.recv(), 30)
                return queued, line

        queued, line = run(session())
        assert line.startswith(b"pid "), line
        assert queued[0]["data"]["queue"]["state"] == "PENDING"
        assert queued[0]["data"]["text"].startswith("waiting in Slurm's queue: Resources")
        assert "ready" in events.names()
        wait_until(lambda: not our_jobs(slurm, tmp_path), "the session's job to end")
        gw.stop()
    finally:
        slurm.cancel(blocker)


def test_a_job_whose_program_fails_before_it_listens_fails_the_start_with_the_programs_words(
        slurm, gateway, tmp_path):
    failing = [["/bin/sh", "-c", "echo 'cannot open the licence file' >&2; exit 3"]]
    gw = gateway(gateway_args(tmp_path, config=program_config(tmp_path, failing)), http=True)
    token = reserve(gw, "job")
    code, reason = run(closed_on(session_url(gw, token)))
    assert code == 1011 and "sh exited (status 3)" in reason, (code, reason)
    assert reason.endswith(": cannot open the licence file"), reason
    wait_until(lambda: not our_jobs(slurm, tmp_path), "no job left")
    assert get(f"{gw.http_url}/v1/status")[1][0]["instances"] == []
    gw.stop()


def test_a_refused_submission_fails_the_start_with_slurms_message(slurm, gateway, tmp_path, marker):
    config = program_config(tmp_path, echo_programs(marker), sbatch=["--partition=no-such-partition"])
    gw = gateway(gateway_args(tmp_path, config=config), http=True)
    token = reserve(gw, "job")
    events = Reader(f"{gw.http_url}/v1/events/{token}")
    code, reason = run(closed_on(session_url(gw, token)))
    said = ("sbatch refused the job: invalid partition specified: no-such-partition; "
            "Batch job submission failed: Invalid partition name specified")
    # A close reason is 123 bytes at most: cut in its middle; the event has all of it.
    assert code == 1011 and reason[:60] == said[:60] and reason.endswith(said[-40:]), reason
    wait_until(lambda: "ended" in events.names(), "the ended event")
    ending = [e for e in events.events if e["event"] == "ending"][0]["data"]
    assert ending == {**ending, "reason": "failed", "failure": said}
    assert not our_jobs(slurm, tmp_path)
    gw.stop()


def test_scancel_from_outside_ends_the_session_with_1011_and_slurms_state(slurm, gateway, tmp_path, marker):
    gw = gateway(gateway_args(tmp_path, config=program_config(tmp_path, echo_programs(marker))), http=True)
    token = reserve(gw, "job")
    events = Reader(f"{gw.http_url}/v1/events/{token}")

    async def session():
        async with open_ws(session_url(gw, token)) as ws:
            assert (await asyncio.wait_for(ws.recv(), 30)).startswith(b"pid ")
            job = list(our_jobs(slurm, tmp_path))[0]
            slurm.run("scancel", job)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            except websockets.ConnectionClosed as e:
                return job, e.rcvd.code, e.rcvd.reason

    job, code, reason = run(session())
    assert (code, reason) == (1011, f"session ended: Slurm job {job} cancelled"), (code, reason)
    wait_until(lambda: "ended" in events.names(), "the ended event")
    ending = [e for e in events.events if e["event"] == "ending"][0]["data"]
    assert ending == {**ending, "reason": "instance_ended", "detail": f"Slurm job {job} cancelled"}
    assert not marked(marker)
    gw.stop()


def test_a_job_that_never_reports_is_cancelled_after_the_start_timeout(slurm, gateway, tmp_path, marker):
    silent = [[sys.executable, "-c", "import time, sys; time.sleep(120)", marker]]
    gw = gateway(gateway_args(tmp_path, "--start_timeout", "3",
                              config=program_config(tmp_path, silent, ready_timeout=100)), http=True)
    token = reserve(gw, "job")
    code, reason = run(closed_on(session_url(gw, token)))
    assert code == 1011 and "did not report where it listens within 3 s of its start; it is cancelled" in reason
    wait_until(lambda: not our_jobs(slurm, tmp_path), "the job to be cancelled")
    wait_until(lambda: not marked(marker), "the job's program to end")
    gw.stop()


def test_a_gateway_killed_with_sigkill_has_its_jobs_cancelled_by_the_next_start(slurm, gateway, tmp_path, marker):
    args = gateway_args(tmp_path, "--reconnect_grace", "60",
                        config=program_config(tmp_path, echo_programs(marker)))
    first = gateway(args, http=True)
    token = reserve(first, "job")
    assert run(first_bytes(session_url(first, token), 4)).startswith(b"pid ")
    job = list(our_jobs(slurm, tmp_path))[0]
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(5)
    assert job in our_jobs(slurm, tmp_path), "a SIGKILL ends nothing"
    second = gateway(args, http=True)
    second.wait_for(rf"cancelling 1 Slurm job\(s\) a previous run left: {job}")
    wait_until(lambda: not our_jobs(slurm, tmp_path), "the left job to be cancelled")
    assert list((tmp_path / "jobs").iterdir()) == [], "its report and output removed"
    wait_until(lambda: not marked(marker), "its program to end")
    second.stop()


def test_without_slurms_commands_a_slurm_service_is_one_start_up_line_and_a_clear_refusal(
        gateway, tmp_path, marker):
    env = {"PATH": str(tmp_path)}  # no sbatch, no squeue; the gateway itself is run by its path
    gw = gateway(gateway_args(tmp_path, config=program_config(tmp_path, echo_programs(marker))), http=True,
                 env=env)
    gw.wait_for(r"Slurm service\(s\) 'job': sbatch, squeue, scancel not found on PATH")
    token = reserve(gw, "job")
    code, reason = run(closed_on(session_url(gw, token)))
    assert code == 1011 and reason.startswith("cannot run sbatch"), (code, reason)
    assert gw.log.count("Slurm service(s)") == 1
    gw.stop()


def test_keep_sessions_leaves_the_job_running_and_the_next_start_takes_it_back(slurm, gateway, tmp_path, marker):
    args = gateway_args(tmp_path, "--reconnect_grace", "60", "--keep_sessions",
                        config=program_config(tmp_path, echo_programs(marker)))
    first = gateway(args, http=True)
    token = reserve(first, "job")
    greeting = run(first_line(session_url(first, token)))
    (job,) = our_jobs(slurm, tmp_path)
    assert first.stop() == 0
    assert job in our_jobs(slurm, tmp_path), "kept: not cancelled"
    second = gateway(args, http=True)
    second.wait_for(rf"Slurm job {job} taken back from the previous run")
    assert run(first_line(session_url(second, token))) == greeting, "the same program greets: the same job"
    assert our_jobs(slurm, tmp_path) == {job: our_jobs(slurm, tmp_path)[job]}, "nothing cancelled, nothing new"
    assert get(f"{second.http_url}/v1/release/{token}")[0] == 200
    wait_until(lambda: not our_jobs(slurm, tmp_path), "the adopted job to be cancelled")
    second.stop()


def squeue_calls(gw):
    """nexusws_slurm_commands_total{command="squeue"} of C{gw}."""
    with urllib.request.urlopen(f"{gw.http_url}/v1/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^nexusws_slurm_commands_total\{command="(\w+)"\} (\S+)$', text, re.M)}


def test_a_hundred_queued_sessions_cost_one_squeue_a_poll(slurm, gateway, tmp_path, marker):
    """Issue 16's polling cost through a gateway: 100 sessions whose jobs wait behind an exclusive
    one; squeue is run once a poll for all of them, not once a job."""
    blocker = slurm.submit("--exclusive", "--time=5", "--output=/dev/null", "--wrap", "sleep 300")
    try:
        wait_until(lambda: slurm.jobs().get(blocker, ("", ""))[1] == "RUNNING", "the exclusive job to run")
        config = program_config(tmp_path, echo_programs(marker), count=100)
        gw = gateway(gateway_args(tmp_path, "--max_reservations_per_user", "0", "--max_tunnels_per_address", "0",
                                  config=config), http=True)
        tokens = [reserve(gw, "job") for _ in range(100)]

        async def queued():
            sockets = [await open_ws(session_url(gw, token)).__aenter__() for token in tokens]
            try:
                await asyncio.to_thread(wait_until, lambda: len(our_jobs(slurm, tmp_path)) == 100,
                                        "100 pending jobs", 60)
                await asyncio.to_thread(wait_until, lambda: all(
                    s["instances"] and all(i.get("backend", {}).get("slurm_state") == "PENDING"
                                           for i in s["instances"]) for s in get(f"{gw.http_url}/v1/status")[1]),
                    "the gateway to see all of them pending", 60)
                before, started = squeue_calls(gw), time.monotonic()
                await asyncio.sleep(10)
                after, took = squeue_calls(gw), time.monotonic() - started
                load = get(f"{gw.http_url}/v1/load?format=json")[1]
                return before, after, took, load
            finally:
                for ws in sockets:
                    await ws.close()

        before, after, took, load = run(queued(), timeout=180)
        polls = after["squeue"] - before["squeue"]
        # poll_interval 0.5 s, doubling while nothing changes: at most one call each half second.
        assert 1 <= polls <= took / 0.5 + 1, (polls, took)
        assert after["sbatch"] == 100 and load["pending"] == 100 and load["services"]["job"]["pending"] == 100
        wait_until(lambda: not our_jobs(slurm, tmp_path), "the 100 jobs to be cancelled", 90)
        assert squeue_calls(gw)["scancel"] == 100
        gw.stop()
    finally:
        slurm.cancel(blocker)


def test_a_controller_that_stops_answering_ends_no_session_and_is_one_warning(slurm, gateway, tmp_path, marker):
    gw = gateway(gateway_args(tmp_path, config=program_config(tmp_path, echo_programs(marker))), http=True)
    token = reserve(gw, "job")

    async def session():
        async with open_ws(session_url(gw, token)) as ws:
            assert (await asyncio.wait_for(ws.recv(), 30)).startswith(b"pid ")
            slurm.run("scontrol", "shutdown", "slurmctld")
            try:
                await asyncio.to_thread(gw.wait_for, r"squeue failed: .*jobs are not taken for gone", 30)
                await asyncio.sleep(3)
                await echo(ws, b"still here")
            finally:
                subprocess.run(["slurmctld"], env=slurm.env, check=True, timeout=30)  # its saved state: no -c
                await asyncio.to_thread(wait_until, lambda: subprocess.run(
                    ["sinfo", "-h"], env=slurm.env, capture_output=True).returncode == 0, "slurmctld back", 60)
            await asyncio.to_thread(gw.wait_for, r"squeue answers again", 45)
            await echo(ws, b"and after")

    run(session(), timeout=150)
    assert gw.log.count("squeue failed") == 1, "one warning for the outage"
    wait_until(lambda: not our_jobs(slurm, tmp_path), "the job to be cancelled")
    gw.stop()
