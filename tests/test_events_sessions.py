"""A session's events end to end: a real gateway, a real session script that reports its
progress, a real HTTP client reading /v1/events/{token} while a WebSocket client launches,
detaches, re-attaches and releases the session."""


from support.sessions import (
    echo,
    gateway_args,
    get,
    open_ws,
    reserve,
    run,
    service_config,
    session_url,
)
from support.sse import Reader
from support.waiting import wait_until


def progress_config(tmp_path):
    return service_config(tmp_path, "progress", "progress_echo.py")


def test_the_event_stream_of_a_launch_detach_reattach_and_release(gateway, tmp_path, marker):
    gw = gateway(gateway_args(tmp_path, "--reconnect_grace", "30", config=progress_config(tmp_path)),
                 http=True)
    token = reserve(gw, "progress", marker=marker)
    stream = Reader(f"{gw.http_url}/v1/events/{token}")
    assert stream.response.status == 200
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    assert stream.response.headers["cache-control"] == "no-store"
    wait_until(lambda: stream.names() == ["reserved"], 10, "the reserved event")

    async def session():
        async with open_ws(session_url(gw, token)) as ws:
            await echo(ws)

    run(session())
    wait_until(lambda: "detached" in stream.names(), 10, "the detached event")
    assert get(f"{gw.http_url}/v1/session/{token}")[1]["state"] == "detached"
    run(session())
    wait_until(lambda: stream.names().count("detached") == 2, 10, "the second detached event")
    assert get(f"{gw.http_url}/v1/release/{token}") == (200, {"released": token})
    wait_until(lambda: stream.closed, 15, "the stream's end after ended")
    assert stream.names() == ["reserved", "starting", "progress", "progress", "ready", "attached",
                              "detached", "reattached", "detached", "ending", "ended"]
    data = [e["data"] for e in stream.events]
    assert [d["id"] for d in data] == list(range(1, 12))
    assert data[2]["text"] == "preparing the server" and data[3]["text"].startswith("waiting for port ")
    assert 0 < data[6]["grace_left"] <= 30 and data[9]["reason"] == "released"
    stream.close()

    again = Reader(f"{gw.http_url}/v1/events/{token}", headers={"Last-Event-ID": "8"})
    wait_until(lambda: again.closed, 10, "the resumed stream's end")
    assert [e["data"]["id"] for e in again.events] == [9, 10, 11]
    again.close()
    status, snapshot = get(f"{gw.http_url}/v1/session/{token}")
    assert status == 200 and snapshot["state"] == "released" and snapshot["service"] == "progress"
    assert token not in gw.log
