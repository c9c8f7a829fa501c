"""A TCP service for the HTML report's tests.

"print" writes a stdout line that is not UTF-8 and looks like markup; "burst N"
makes N one-byte writes to a file (each an intercepted call, some of them denied
by the spec's fault) and answers how many failed.
"""
import os
import socket
import sys

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7400))
s.listen(16)
path = os.path.join(os.environ["TMPDIR"], "burst.out")
while True:
    c, _ = s.accept()
    line = c.makefile().readline().strip()
    if line == "print":
        sys.stdout.buffer.write(b"\xff\xfe raw </script><!-- <b>not markup</b> & done\n")
        sys.stdout.flush()
        c.sendall(b"OK\n")
    elif line.startswith("burst "):
        n, failed = int(line.split()[1]), 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for _ in range(n):
            try:
                os.write(fd, b"x")
            except OSError:
                failed += 1
        os.close(fd)
        c.sendall(("WROTE %d FAILED %d\n" % (n, failed)).encode())
    c.close()
