"""Sleeps 3 s before listening, then answers SLEEP by sleeping 10 s and replying how
long that took by the raw clock_gettime syscall (not the vDSO)."""
import ctypes
import os
import platform
import socket
import time

libc = ctypes.CDLL(None, use_errno=True)
SYS_CLOCK_GETTIME = 113 if platform.machine() == "aarch64" else 228


class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


def raw_monotonic():
    ts = Timespec()
    libc.syscall(SYS_CLOCK_GETTIME, 1, ctypes.byref(ts))
    return ts.sec + ts.nsec / 1e9


time.sleep(3)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7600))
s.listen(4)
while True:
    c, _ = s.accept()
    if c.makefile().readline().strip() == "SLEEP":
        t0 = raw_monotonic()
        time.sleep(10)
        c.sendall(("%.1f\n" % (raw_monotonic() - t0)).encode())
    c.close()
