#!/usr/bin/env python3
"""Memory per idle keep-alive HTTP connection.

Starts a server, opens N connections to it, sends `GET /` on each and reads every answer
(`Hello, World!`), leaves them open and idle for 2 s, then reads the server's VmRSS from
/proc and prints the growth per connection. `{addr}` in the command is replaced by the
address to listen on; the server must print one line (its "listening on" line) first.

    ulimit -n 20000
    benches/idle_rss.py "target/release/examples/http_server --backend uring --addr {addr}" 10000
    benches/idle_rss.py "target/release/examples/tokio_http_server --addr {addr}" 10000

One run per server moves by a few %: compare servers as ratios, in one sitting.
"""
import socket
import subprocess
import sys
import time

cmd, count = sys.argv[1], int(sys.argv[2])
port = int(sys.argv[3]) if len(sys.argv) > 3 else 18200
server = subprocess.Popen(
    cmd.replace("{addr}", f"127.0.0.1:{port}").split(),
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
)
server.stdout.readline()


def rss_kib():
    with open(f"/proc/{server.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


try:
    base = rss_kib()
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        socks.append(s)
    answered = 0
    for s in socks:
        data = b""
        while b"Hello, World!" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        answered += b"Hello, World!" in data
    time.sleep(2)
    rss = rss_kib()
    name = cmd.split()[0].rsplit("/", 1)[-1]
    print(
        f"{name}: {base / 1024:.1f} MiB at start, {rss / 1024:.1f} MiB with {count} idle "
        f"connections ({answered} answered): {(rss - base) * 1.024 / count:.2f} KB each"
    )
    if answered != count:
        sys.exit(1)
finally:
    server.kill()
