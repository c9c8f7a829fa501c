"""A Python test target: performs file and socket operations named on the command
line and records the errno each saw ("OK" or e.g. "EIO"), one line per operation, in
$PROBE_OUT. Ops: open:PATH create:PATH write:PATH read:PATH fsync:PATH connect:PORT."""
import errno
import os
import socket
import sys


def result(fn):
    try:
        fn()
        return "OK"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def main():
    out = os.open(os.environ["PROBE_OUT"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for spec in sys.argv[1:]:
        op, _, arg = spec.partition(":")
        if op == "open":
            r = result(lambda: os.close(os.open(arg, os.O_RDONLY)))
        elif op == "create":
            r = result(lambda: os.close(os.open(arg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)))
        elif op == "write":
            def w():
                fd = os.open(arg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, b"hello")
                finally:
                    os.close(fd)
            r = result(w)
        elif op == "read":
            def rd():
                with open(arg, "rb") as f:
                    f.read()
            r = result(rd)
        elif op == "fsync":
            def fs():
                fd = os.open(arg, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            r = result(fs)
        elif op == "connect":
            def c():
                with socket.create_connection(("127.0.0.1", int(arg)), timeout=2):
                    pass
            r = result(c)
        else:
            r = "UNKNOWN-OP"
        os.write(out, f"{op} {arg or '-'} {r}\n".encode())


main()
