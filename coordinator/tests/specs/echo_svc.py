"""A TCP echo service that logs each line to a file and fsyncs it first."""
import os
import socket

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7000))
s.listen(16)
log = os.path.join(os.environ["TMPDIR"], "echo.log")
while True:
    c, _ = s.accept()
    line = c.makefile().readline().strip()
    try:
        with open(log, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        reply = "ECHO " + line
    except OSError as e:
        reply = "ERR %d" % e.errno
    c.sendall((reply + "\n").encode())
    c.close()
