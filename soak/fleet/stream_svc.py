"""A TCP service that, asked for N, prints N JSON log lines on stdout at once;
asked for "text N", N lines whose text is not all ASCII."""
import json
import socket
import sys

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7200))
s.listen(16)
while True:
    c, _ = s.accept()
    line = c.makefile().readline().strip()
    if line:
        text = line.startswith("text ")
        n = int(line.split()[-1])
        msg = "commande traitée ✓ 注文" if text else "order processed"
        out = "".join(
            json.dumps({"level": "INFO", "msg": msg, "order": i, "shard": i % 8},
                       ensure_ascii=not text) + "\n"
            for i in range(n))
        sys.stdout.buffer.write(out.encode())
        sys.stdout.flush()
        c.sendall(("LOGGED %d\n" % n).encode())
    c.close()
