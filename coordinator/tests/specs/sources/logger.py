"""A TCP service that logs as it works: JSON lines on stdout, logfmt on stderr.

Each line it receives is logged and answered with OK; "error" logs at ERROR,
"burst N" logs N lines at once, "binary" writes bytes that are not UTF-8.
On SIGTERM it logs a last line without a newline and exits.
"""
import json
import os
import signal
import socket
import sys


def log(level, msg, **kw):
    sys.stdout.write(json.dumps({"level": level, "msg": msg, **kw}) + "\n")
    sys.stdout.flush()


def bye(*_):
    sys.stdout.write(json.dumps({"level": "INFO", "msg": "shutting down"}))
    sys.stdout.flush()
    os._exit(0)


signal.signal(signal.SIGTERM, bye)
log("INFO", "starting", pid=os.getpid())
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7300))
s.listen(16)
while True:
    c, _ = s.accept()
    line = c.makefile().readline().strip()
    if line == "error":
        log("ERROR", "something broke", order_id="o-17")
    elif line.startswith("burst "):
        n = int(line.split()[1])
        sys.stdout.write("".join(json.dumps({"level": "INFO", "msg": "burst", "i": i}) + "\n" for i in range(n)))
        sys.stdout.flush()
    elif line == "binary":
        sys.stdout.buffer.write(b"\xff\xfe not json\n")
        sys.stdout.flush()
    else:
        log("INFO", line)
    sys.stderr.write('level=warn msg="got line" bytes=%d\n' % len(line))
    sys.stderr.flush()
    c.sendall(b"OK\n")
    c.close()
