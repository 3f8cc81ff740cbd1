"""Real gateway processes with real clients: the basic tunnel arguments, running a scenario, memory baselines."""

import asyncio

from websockets.asyncio.client import connect

from support.waiting import wait_until_async

LOOPBACK = ["--ws_listen", "tcp:0:interface=127.0.0.1"]


def basic(port, *extra):
    return [*LOOPBACK, "--client_hostname", "127.0.0.1", "--client_port", str(port), *extra]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def reset_peak(gw):
    """Reset the kernel's peak-RSS mark of the gateway (clear_refs 5)."""
    with open(f"/proc/{gw.proc.pid}/clear_refs", "w") as f:
        f.write("5")


async def fresh_peer(backend, ws):
    """The backend connection of tunnel C{ws}, the newest one."""
    await backend.peer()
    for _ in range(200):
        if len(backend.peers) and backend.peers[-1].transport is not None:
            break
        await asyncio.sleep(0.01)
    return backend.peers[-1]


async def warm_up(gw, backend):
    """One tunnel to C{backend} first, so start-up allocations are not counted as growth;
    it is over (closed at the gateway and at the backend) when this returns."""
    closed = gw.log.count("tunnel closed: ")
    async with connect(gw.ws_url, subprotocols=["binary"], max_size=None) as ws:
        peer = await fresh_peer(backend, ws)
        peer.transport.resume_reading()
        peer.transport.write(b"x" * 65536)
        await ws.send(b"y" * 65536)
        got = 0
        while got < 65536:
            got += len(await ws.recv())
    await wait_until_async(lambda: gw.log.count("tunnel closed: ") > closed and peer.transport.is_closing(),
                           10, "the warm-up tunnel closed by the gateway and the backend")
    backend.peers.clear()
    backend.connected.clear()
