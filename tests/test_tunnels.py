"""Tunnels through a real gateway process with real clients, on 127.0.0.1 port 0."""

import asyncio
import hashlib
import json
import os
import time

import pytest
import websockets
from websockets.asyncio.client import connect

from conftest import NODE_DIR
from support.tcp_peers import Backend, closed_port
from support.tunnels import basic, fresh_peer, reset_peak, run, warm_up
from support.waiting import wait_steady

MiB = 1024 * 1024
#: A flood is held back once it has not moved for this long (seconds): it moves every few
#: milliseconds while any buffer on the way has room.
STALL_QUIET = 0.5


def test_echo_through_the_tunnel_is_exact_in_both_directions(gateway):
    async def scenario():
        async with Backend(echo=True) as backend:
            gw = gateway(basic(backend.port))
            payloads = [os.urandom(n) for n in (1, 2, 125, 126, 65535, 65536, 65537, 300_000)]
            async with connect(gw.ws_url + "/websockify", subprotocols=["binary"], max_size=None) as ws:
                assert ws.subprotocol == "binary"
                sent = b"".join(payloads)
                for p in payloads:
                    await ws.send(p)
                got = bytearray()
                while len(got) < len(sent):
                    got += await ws.recv()
                assert bytes(got) == sent
    run(scenario())


def test_client_without_subprotocol_is_accepted(gateway):
    async def scenario():
        async with Backend(greeting=b"RFB 003.008\n") as backend:
            gw = gateway(basic(backend.port))
            async with connect(gw.ws_url) as ws:
                assert ws.subprotocol is None
                assert await ws.recv() == b"RFB 003.008\n"
    run(scenario())


def test_text_frames_reach_the_backend_as_utf8(gateway):
    async def scenario():
        async with Backend() as backend:
            gw = gateway(basic(backend.port))
            async with connect(gw.ws_url, subprotocols=["binary"]) as ws:
                await ws.send("grüße")
                peer = await backend.peer()
                for _ in range(100):
                    if peer.count >= len("grüße".encode()):
                        break
                    await asyncio.sleep(0.02)
                assert bytes(peer.received) == "grüße".encode()
    run(scenario())


def test_backend_data_then_close_reaches_the_client_whole_then_1000(gateway):
    """8 MiB written just before the backend closes all arrive, then a normal close."""
    blob = os.urandom(8 * MiB)

    async def scenario():
        async with Backend(greeting=blob) as backend:
            gw = gateway(basic(backend.port))
            async with connect(gw.ws_url, subprotocols=["binary"], max_size=None) as ws:
                peer = await backend.peer()
                peer.transport.close()  # asyncio flushes the greeting, then FIN
                got = bytearray()
                with pytest.raises(websockets.ConnectionClosedOK):
                    while True:
                        got += await ws.recv()
                assert len(got) == len(blob) and bytes(got) == blob
                assert ws.close_code == 1000
    run(scenario())


def test_client_data_then_close_reaches_the_backend_whole_then_eof(gateway):
    blob = os.urandom(8 * MiB)

    async def scenario():
        async with Backend() as backend:
            gw = gateway(basic(backend.port))
            async with connect(gw.ws_url, subprotocols=["binary"]) as ws:
                for i in range(0, len(blob), 64 * 1024):
                    await ws.send(blob[i:i + 64 * 1024])
            peer = await backend.peer()
            assert await asyncio.wait_for(peer.eof, 20) is True, "backend must see a clean EOF"
            assert bytes(peer.received) == blob
    run(scenario())


def test_unreachable_backend_is_refused_with_502_and_logged(gateway):
    async def scenario():
        port = await closed_port()
        gw = gateway(basic(port))
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(gw.ws_url, subprotocols=["binary"]):
                pass
        assert info.value.response.status_code == 502
        line = gw.wait_for(r"tunnel refused").string
        assert f"127.0.0.1:{port}" in line and "refused" in line.lower()
    run(scenario())


def test_each_tunnel_logs_open_and_close_with_addresses_bytes_and_duration(gateway):
    async def scenario():
        async with Backend(echo=True) as backend:
            gw = gateway(basic(backend.port))
            async with connect(gw.ws_url + "/x?token=hush", subprotocols=["binary"]) as ws:
                await ws.send(b"12345")
                assert await ws.recv() == b"12345"
                local = ws.local_address
            opened = gw.wait_for(r"tunnel open").string
            closed = gw.wait_for(r"tunnel closed").string
            assert f"127.0.0.1:{local[1]}" in opened and f"127.0.0.1:{backend.port}" in opened
            assert "5 bytes up" in closed and "5 bytes down" in closed
            assert "hush" not in gw.log
    run(scenario())


# --- bounded memory -----------------------------------------------------------


def test_flood_into_a_stalled_client_keeps_gateway_memory_bounded_and_loses_nothing(gateway):
    """The backend floods 256 MiB at a client that stops reading: growth < 32 MiB, all bytes arrive."""
    total = 256 * MiB
    chunk = os.urandom(64 * 1024)

    async def scenario():
        async with Backend(keep=False) as flood:
            gw = gateway(basic(flood.port))
            await warm_up(gw, flood)
            baseline = gw.rss_kib()
            reset_peak(gw)
            async with connect(gw.ws_url, subprotocols=["binary"], max_size=None, max_queue=4) as ws:
                peer = await fresh_peer(flood, ws)
                sent, progress = hashlib.sha256(), [0]
                writer = asyncio.create_task(write_all(peer, chunk, total, sent, progress))
                # The client reads nothing meanwhile: once the buffers on the way fill, flow
                # control must stop the backend's writes (the writer blocks, its count stops).
                stalled_at = await wait_steady(held_back(writer, progress, "the backend"), STALL_QUIET, 30,
                                               "the backend's writes held back by flow control")
                stalled_growth = gw.hwm_kib() - baseline
                got = hashlib.sha256()
                count = 0
                while count < total:
                    data = await ws.recv()
                    count += len(data)
                    got.update(data)
                await writer
                growth = gw.hwm_kib() - baseline
            print(f"\nGROWTH client-stalled: stalled={stalled_growth} KiB total={growth} KiB"
                  f" (held back after {stalled_at // MiB} MiB)")
            assert count == total and got.hexdigest() == sent.hexdigest()
            assert stalled_growth < 32 * 1024, f"grew {stalled_growth} KiB while stalled"
            assert growth < 32 * 1024, f"grew {growth} KiB during the flood"
    run(scenario())


def held_back(task, progress, who):
    """For L{wait_steady}: the bytes C{task} (C{who}'s sending) has sent so far
    (C{progress[0]}); fails at once if it is done, all sent: flow control did not
    hold it back."""
    def value():
        assert not task.done(), f"flow control must hold {who} back"
        return progress[0]
    return value


async def write_all(peer, chunk, total, digest, progress):
    """Write C{total} bytes to C{peer}, respecting asyncio's write buffer limits;
    C{progress[0]} counts the bytes written."""
    transport = peer.transport
    transport.set_write_buffer_limits(high=256 * 1024)
    while progress[0] < total:
        while transport.get_write_buffer_size() > 256 * 1024:
            await asyncio.sleep(0.005)
        transport.write(chunk)
        digest.update(chunk)
        progress[0] += len(chunk)


def test_flood_into_a_stalled_backend_keeps_gateway_memory_bounded_and_loses_nothing(gateway):
    """The client floods 256 MiB at a backend that stops reading: growth < 32 MiB, all bytes arrive."""
    total = 256 * MiB
    chunk = os.urandom(64 * 1024)

    async def scenario():
        async with Backend(stalled=True, keep=False) as backend:
            gw = gateway(basic(backend.port))
            await warm_up(gw, backend)
            baseline = gw.rss_kib()
            reset_peak(gw)
            async with connect(gw.ws_url, subprotocols=["binary"]) as ws:
                peer = await fresh_peer(backend, ws)
                sent, progress = hashlib.sha256(), [0]

                async def send_all():
                    for _ in range(total // len(chunk)):
                        await ws.send(chunk)
                        sent.update(chunk)
                        progress[0] += len(chunk)

                sender = asyncio.create_task(send_all())
                # The backend reads nothing meanwhile: once the buffers on the way fill, flow
                # control must stop the client's sends (ws.send blocks, the count stops).
                stalled_at = await wait_steady(held_back(sender, progress, "the client"), STALL_QUIET, 30,
                                               "the client's sends held back by flow control")
                stalled_growth = gw.hwm_kib() - baseline
                peer.transport.resume_reading()
                await sender
                deadline = time.monotonic() + 60
                while peer.count < total and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                growth = gw.hwm_kib() - baseline
            print(f"\nGROWTH backend-stalled: stalled={stalled_growth} KiB total={growth} KiB"
                  f" (held back after {stalled_at // MiB} MiB)")
            assert peer.count == total and peer.digest.hexdigest() == sent.hexdigest()
            assert stalled_growth < 32 * 1024, f"grew {stalled_growth} KiB while stalled"
            assert growth < 32 * 1024, f"grew {growth} KiB during the flood"
    run(scenario())


# --- a second, independent client: Node's ws ------------------------------------

NODE_CLIENT = r"""
const WebSocket = require('ws');
const [url, size] = [process.argv[2], parseInt(process.argv[3])];
const ws = new WebSocket(url, ['binary']);
const sent = require('crypto').randomBytes(size);
let got = [];
let n = 0;
ws.on('open', () => { for (let i = 0; i < size; i += 50000) ws.send(sent.subarray(i, i + 50000)); });
ws.on('message', (data) => {
  got.push(data); n += data.length;
  if (n >= size) { ws.close(1000); }
});
ws.on('close', (code) => {
  const same = Buffer.concat(got).equals(sent);
  console.log(JSON.stringify({protocol: ws.protocol, code, same, n}));
});
ws.on('error', (e) => { console.log(JSON.stringify({error: String(e)})); process.exit(1); });
"""


@pytest.fixture(scope="session")
def node_ws(node_modules):
    """A Node.js echo client using the 'ws' package."""
    script = NODE_DIR / "echo_client.js"
    script.write_text(NODE_CLIENT)
    return script


def test_node_ws_client_round_trips_through_the_tunnel(gateway, node_ws):
    async def scenario():
        async with Backend(echo=True) as backend:
            gw = gateway(basic(backend.port))
            proc = await asyncio.create_subprocess_exec(
                "node", str(node_ws), gw.ws_url + "/websockify", str(3 * MiB),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            result = json.loads(out.decode().strip().splitlines()[-1])
            assert result == {"protocol": "binary", "code": 1000, "same": True, "n": 3 * MiB}
    run(scenario())
