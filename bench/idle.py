"""Opens N keep-alive connections, sends one authorized request on each,
reads the answers, then holds them idle for HOLD seconds.

usage: idle.py PORT N HOLD AUTH"""
import socket
import sys
import time

port, n, hold, auth = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
request = (
    "GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n\r\n" % auth
).encode()
conns = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request)
    conns.append(s)
ok = 0
for s in conns:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    if data.startswith(b"HTTP/1.1 200"):
        ok += 1
print("open %d ok %d" % (len(conns), ok), flush=True)
time.sleep(hold)
for s in conns:
    s.close()
