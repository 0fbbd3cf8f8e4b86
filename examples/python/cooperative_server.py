"""A socket-activated HTTP server that reports to preforkd through its slot.

preforkd run --busy-from slot --listen tcp://127.0.0.1:8000 -- python3 examples/python/cooperative_server.py
GET /sleep/MS answers after MS ms with its pid and its own count of requests in hand.
"""
import os, socket, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preforkd_slot import Slot

assert os.environ.get("LISTEN_PID") == str(os.getpid()), "not socket-activated for this process"
listener = socket.socket(fileno=3)
slot = Slot()
served = 0
while True:
    conn, _ = listener.accept()
    slot.busy()
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        more = conn.recv(65536)
        if not more:
            break
        head += more
    head = head.decode("latin-1")
    path = head.split(" ")[1] if " " in head else "/"
    if path.startswith("/sleep/"):
        time.sleep(int(path[7:]) / 1000)
    served += 1
    body = f"pid {os.getpid()} served {served}\n".encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
    conn.close()
    slot.idle()
