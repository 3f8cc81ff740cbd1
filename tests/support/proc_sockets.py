"""Which TCP connections a real process holds, read from Linux /proc: whether a
gateway has accepted a connection (not only the kernel, in its listen backlog),
or has closed its end of one."""

import os


def socket_inodes(pid):
    """The inodes (as /proc/net/tcp writes them) of the sockets process C{pid} holds open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def accepted_peers(pid, port):
    """The peer ports of the connections to local TCP C{port} that process C{pid}
    holds: it has accepted them and not yet closed them."""
    inodes = socket_inodes(pid)
    peers = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.readlines()[1:]
        except FileNotFoundError:  # no IPv6
            continue
        for row in rows:
            fields = row.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state != "0A" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:  # 0A: LISTEN
                peers.add(int(remote.rsplit(":", 1)[1], 16))
    return peers
