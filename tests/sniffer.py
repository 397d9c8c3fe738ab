"""Run by a test as a local user who does not own the kernel: try every way to overhear it.

    python sniffer.py SECRET FOLDER SECONDS

It subscribes to everything on every TCP port that listens on the loopback
(IPv4 and IPv6), connects a subscriber to every unix socket that
/proc/net/unix lists, and lists FOLDER, the owner's folder of kernel sockets.
It listens until it has heard SECRET, or for SECONDS. It prints one JSON line:
{"heard": bool, "tcp_ports": N, "unix_sockets": N, "unix_connected": [paths],
"folder": "listed" | error name}.
"""

import json
import os
import socket
import sys
import time

import zmq


def loopback_listeners():
    ports = set()
    for table, loopback in (("/proc/net/tcp", "0100007F"), ("/proc/net/tcp6", "0" * 24 + "01000000")):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and address in (loopback, "00000000", "0" * 32):  # LISTEN
                ports.add(("[::1]" if len(address) == 32 else "127.0.0.1", int(port, 16)))
    return sorted(ports)


def unix_sockets():
    paths = set()
    with open("/proc/net/unix") as f:
        for row in f.read().splitlines()[1:]:
            fields = row.split()
            if len(fields) >= 8 and fields[7].startswith("/"):
                paths.add(fields[7])
    return sorted(paths)


def can_connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


secret, folder, seconds = sys.argv[1].encode(), sys.argv[2], float(sys.argv[3])
context = zmq.Context()
subscribers = []
tcp = loopback_listeners()
for host, port in tcp:
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://{host}:{port}")
    subscribers.append(sub)
unix = unix_sockets()
connected = [path for path in unix if can_connect(path)]
for path in unix:
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"ipc://{path}")
    subscribers.append(sub)
try:
    os.listdir(folder)
    listed = "listed"
except OSError as e:
    listed = type(e).__name__

poller = zmq.Poller()
for sub in subscribers:
    poller.register(sub, zmq.POLLIN)
heard = False
deadline = time.monotonic() + seconds
while not heard and time.monotonic() < deadline:
    for sub, _ in poller.poll(timeout=200):
        if any(secret in frame for frame in sub.recv_multipart()):
            heard = True
result = {
    "heard": heard,
    "tcp_ports": len(tcp),
    "unix_sockets": len(unix),
    "unix_connected": connected,
    "folder": listed,
}
print(json.dumps(result), flush=True)
for sub in subscribers:
    sub.close()
context.term()
