#!/usr/bin/python3
"""Per-request latency of Redis GET through 127.0.0.1:PORT, one connection of
redis-py (Debian's python3-redis), for scripts/bench-delay.sh.

usage: redis_latency.py PORT REQUESTS [IDLE_US]

With IDLE_US the client sleeps that long before each request, so that the machine
idles between requests as it does while a delay holds one: a round trip that
starts on idle CPUs costs more than one right after another (waking an idle vCPU),
whatever delayed it.

Prints one line: latency mean_us=M p50_us=P p99_us=Q
"""
import sys
import time

import redis


def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    idle = int(sys.argv[3]) / 1e6 if len(sys.argv) > 3 else 0.0
    r = redis.Redis(host="127.0.0.1", port=port)
    r.set("bench", "0123456789")
    for _ in range(20):
        r.get("bench")
    lat = []
    for _ in range(n):
        if idle:
            time.sleep(idle)
        t0 = time.perf_counter_ns()
        r.get("bench")
        lat.append((time.perf_counter_ns() - t0) / 1e3)
    r.close()
    lat.sort()
    mean = sum(lat) / n
    print(
        f"latency mean_us={mean:.1f} p50_us={lat[n // 2]:.1f} "
        f"p99_us={lat[int((n - 1) * 0.99)]:.1f}"
    )


if __name__ == "__main__":
    main()
