"""A stand-in for EnSight/EnVision: takes the same -vnc argument and serves an RFB greeting.

    fake_ensight.py -vnc "vnc://?rfb_port=P&use_auth=0"
    fake_ensight.py -vnc "vnc://?rfb_port=P&primary_password=SECRET"

It listens on 127.0.0.1:P and answers each connection with the RFB 3.8
version line, reads the client's, then offers security type 1 (none) or 2
(VNC authentication) as the URL asks. Environment: FAKE_ENSIGHT_EXIT=N makes
it exit at once with status N; FAKE_ENSIGHT_DELAY=S makes it wait S seconds
before listening.
"""

import os
import socket
import sys
import time
from urllib.parse import parse_qs, urlsplit


def main(argv):
    if os.environ.get("FAKE_ENSIGHT_EXIT"):
        sys.exit(int(os.environ["FAKE_ENSIGHT_EXIT"]))
    if len(argv) != 2 or argv[0] != "-vnc":
        sys.exit(f"usage: fake_ensight.py -vnc vnc://?rfb_port=P&...; got {argv}")
    url = urlsplit(argv[1])
    query = parse_qs(url.query)
    if url.scheme != "vnc" or "rfb_port" not in query:
        sys.exit(f"bad -vnc URL {argv[1]!r}")
    port = int(query["rfb_port"][0])
    password = query.get("primary_password", [None])[0]
    time.sleep(float(os.environ.get("FAKE_ENSIGHT_DELAY", "0")))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
    auth = "password" if password else "none"
    print(f"fake {os.path.basename(sys.argv[0])}: VNC on 127.0.0.1:{port}, auth {auth}", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            conn.sendall(b"RFB 003.008\n")
            try:
                if len(conn.recv(12)) == 12:
                    conn.sendall(b"\x01\x02" if password else b"\x01\x01")
            except OSError:
                pass


if __name__ == "__main__":
    main(sys.argv[1:])
