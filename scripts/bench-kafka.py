"""Kafka load for scripts/bench-kafka.sh: one measurement against one bootstrap
address with confluent-kafka (librdkafka), printed as one JSON line.

  produce_p50_us / produce_p99_us  one 100-byte record at a time, each awaited
                                   (produce + flush): the round trip through the path
  produce_per_s                    N records sent asynchronously, then flushed
  consume_per_s                    the same N records read back from the start

Usage: bench-kafka.py BOOTSTRAP TOPIC N_LATENCY N_THROUGHPUT
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

boot, topic, n_lat, n_tp = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
admin = AdminClient({"bootstrap.servers": boot})
admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
value = b"x" * 100

p = Producer({"bootstrap.servers": boot, "linger.ms": 0, "acks": "all", "enable.idempotence": False})
lat = []
for i in range(n_lat + 20):
    t = time.perf_counter()
    p.produce(topic, value)
    p.flush(10)
    if i >= 20:  # warm-up: connections, metadata
        lat.append((time.perf_counter() - t) * 1e6)
lat.sort()

t = time.perf_counter()
for i in range(n_tp):
    while True:
        try:
            p.produce(topic, value)
            break
        except BufferError:
            p.poll(0.01)
p.flush(60)
produce_per_s = n_tp / (time.perf_counter() - t)

total = n_lat + 20 + n_tp
c = Consumer({"bootstrap.servers": boot, "group.id": "bench-" + topic, "enable.auto.commit": False,
              "fetch.wait.max.ms": 10})
c.assign([TopicPartition(topic, 0, 0)])
got = 0
first = None  # (time, count) when the first records came
last = None
deadline = time.time() + 60
while got < total and time.time() < deadline:
    msgs = c.consume(1000, 0.5)
    n = sum(1 for m in msgs if m.error() is None)
    if n == 0:
        continue
    got += n
    now = time.perf_counter()
    if first is None:
        first = (now, got)
    last = now
consume_per_s = (got - first[1]) / (last - first[0]) if first and last > first[0] else 0
c.close()
print(json.dumps({
    "produce_p50_us": lat[len(lat) // 2],
    "produce_p99_us": lat[int(len(lat) * 0.99)],
    "produce_per_s": produce_per_s,
    "consume_per_s": consume_per_s,
    "consumed": got,
    "expected": total,
}))
