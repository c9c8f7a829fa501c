"""A TCP service that, asked for N, makes N one-byte writes to a file: many calls."""
import os
import socket

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7100))
s.listen(16)
path = os.path.join(os.environ["TMPDIR"], "chatty.out")
while True:
    c, _ = s.accept()
    line = c.makefile().readline().strip()
    if line:
        n = int(line)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for _ in range(n):
            os.write(fd, b"x")
        os.close(fd)
        c.sendall(("WROTE %d\n" % n).encode())
    c.close()
