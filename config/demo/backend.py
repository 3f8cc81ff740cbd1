"""The demo's TCP service: greets, then answers every line in upper case.

Stands in for a VNC server in the demo: nexusws tunnels a browser to it.
Usage: python backend.py [PORT]   (0 or nothing: any free port; the port is printed)
"""

import asyncio
import sys


async def serve(reader, writer):
    writer.write(b"hello from the nexusws demo backend; type a line\r\n")
    while line := await reader.readline():
        writer.write(b"you said: " + line.strip().upper() + b"\r\n")
        await writer.drain()
    writer.close()


async def main(port):
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    print(f"demo backend listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    except KeyboardInterrupt:
        pass
