"""A line-protocol service for the network tests. Lines it answers:
PING                 -> PONG from $NAME
FETCH host:port MSG  -> what host:port answers to MSG (a fresh connection), or ERR ...
OPEN host:port       -> OK once a connection is open and kept
USE MSG              -> the kept connection's answer to MSG, or ERR ...
WHOAMI               -> uid gid supplementary-groups, and whether $TMPDIR is writable
"""
import os
import socket
import socketserver

NAME = os.environ["NAME"]
PORT = int(os.environ["PORT"])
kept = {}


def ask(sock, msg):
    sock.sendall((msg + "\n").encode())
    reply = sock.makefile("r").readline()
    if not reply:
        raise ConnectionError("closed")
    return reply.rstrip("\n")


def dial(target):
    host, port = target.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for raw in self.rfile:
            line = raw.decode().strip()
            words = line.split(" ", 2)
            try:
                if words[0] == "PING":
                    out = "PONG from " + NAME
                elif words[0] == "FETCH":
                    target = os.path.expandvars(words[1])
                    with dial(target) as s:
                        out = ask(s, words[2])
                elif words[0] == "OPEN":
                    kept["c"] = dial(os.path.expandvars(words[1]))
                    out = "OK"
                elif words[0] == "WHOAMI":
                    probe = os.path.join(os.environ["TMPDIR"], "whoami-" + NAME)
                    open(probe, "w").close()
                    out = "%d %d %s tmp-ok" % (
                        os.getuid(), os.getgid(), ",".join(map(str, sorted(os.getgroups()))))
                elif words[0] == "USE":
                    out = ask(kept["c"], line.split(" ", 1)[1])
                else:
                    out = "ERR unknown " + words[0]
            except Exception as e:  # every failure is an answer
                out = "ERR " + type(e).__name__ + (" " + str(e) if words[0] == "WHOAMI" else "")
            self.wfile.write((out + "\n").encode())
            self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


Server(("0.0.0.0", PORT), Handler).serve_forever()
