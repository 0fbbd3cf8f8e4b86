#!/usr/bin/env python3
"""The parent's CPU under `preforkd run` with 40 busy children (the kernel's view,
no cooperation): 40 connections each held 25 s by examples/activated_http, the
pool at max_children, nothing queued. Prints the parent's CPU per thread over 10 s.

    cargo build --release --bin preforkd --example activated_http
    python3 benches/observer_cost.py [PORT]
"""
import os
import signal
import socket
import subprocess
import sys
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
exe = os.path.join(root, "target/release/preforkd")
srv = os.path.join(root, "target/release/examples/activated_http")
port = int(sys.argv[1]) if len(sys.argv) > 1 else 18800
hz = os.sysconf("SC_CLK_TCK")


def threads(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        name = open(f"/proc/{pid}/task/{t}/comm").read().strip()
        f = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
        out[t] = (name, int(f[11]) + int(f[12]))
    return out


p = subprocess.Popen(
    [exe, "run", "--listen", f"tcp://127.0.0.1:{port}", "--prefork", "40",
     "--max-children", "40", "--", srv],
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    start_new_session=True,
)
try:
    time.sleep(3)
    conns = []
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /sleep/25000 HTTP/1.0\r\n\r\n")
        conns.append(s)
    time.sleep(3)
    before, t0 = threads(p.pid), time.time()
    time.sleep(10)
    after, elapsed = threads(p.pid), time.time() - t0
    total = 0
    for tid, (name, ticks) in sorted(after.items()):
        used = (ticks - before.get(tid, (name, 0))[1]) / hz
        total += used
        print(f"{name:20} {100 * used / elapsed:5.1f}% of a core")
    print(f"{'parent, all threads':20} {100 * total / elapsed:5.1f}% of a core")
finally:
    # Its own session: the parent's group; the keeper then KILLs the children's.
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
