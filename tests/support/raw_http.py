"""Raw bytes to a real listener on loopback, and the HTTP status of the answer."""

import socket


def exchange(port, data, timeout=10):
    """Send C{data} on a fresh connection; return the answer: one whole response, or
    what came before the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before everything was sent: what matters is the answer
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
                if complete(received):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def complete(answer):
    """Whether C{answer} holds a whole HTTP response (headers and Content-Length body)."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip() or 0)
    return False


def status_of(answer):
    line = answer.split(b"\r\n", 1)[0]
    parts = line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else None
