"""A system under test for the protocol specs: a small HTTP API whose handlers use real
client drivers (psycopg, pg8000, PyMySQL, mysql-connector, redis-py, pymemcache,
kafka-python, confluent-kafka, pymongo, pika) to
talk to a database service through the address in $TARGET (host:port).

POST /run with a JSON body runs one operation and answers 200 with
{"ok": true, "result": ...} or {"ok": false, "error": "..."}: the driver's own error,
so a spec can see exactly what the system under test saw.

Environment: PORT, KIND (postgres|mysql|redis|memcached|kafka|mongodb|amqp), TARGET, USER_NAME,
PASSWORD, DATABASE.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KIND = os.environ["KIND"]
HOST, PORT = os.environ["TARGET"].rsplit(":", 1)
PORT = int(PORT)
USER = os.environ.get("USER_NAME", "")
PASSWORD = os.environ.get("PASSWORD", "")
DATABASE = os.environ.get("DATABASE", "")


def jsonable(v):
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {jsonable(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


def postgres(req):
    sql, params = req["sql"], req.get("params")
    if req.get("driver") == "pg8000":
        import pg8000.dbapi

        conn = pg8000.dbapi.connect(
            host=HOST, port=PORT, user=USER, password=PASSWORD, database=DATABASE, timeout=10
        )
        try:
            cur = conn.cursor()
            cur.execute(sql, params or ())
            rows = cur.fetchall() if cur.description else cur.rowcount
            conn.commit()
            return rows
        finally:
            conn.close()
    import psycopg

    conn = psycopg.connect(
        host=HOST,
        port=PORT,
        user=USER,
        password=PASSWORD,
        dbname=DATABASE,
        sslmode="prefer",
        connect_timeout=10,
        autocommit=True,
    )
    try:
        # ClientCursor sends the query text (simple protocol); the default cursor
        # binds parameters on the server (extended protocol: Parse/Bind/Execute).
        cur = psycopg.ClientCursor(conn) if req.get("simple") else conn.cursor()
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else cur.rowcount
    finally:
        conn.close()


def mysql(req):
    sql, params = req["sql"], req.get("params")
    if req.get("driver") == "connector":
        import mysql.connector

        conn = mysql.connector.connect(
            host=HOST, port=PORT, user=USER, password=PASSWORD, database=DATABASE,
            use_pure=True, connection_timeout=10,
        )
        try:
            # Server-side prepared statements: COM_STMT_PREPARE / COM_STMT_EXECUTE.
            cur = conn.cursor(prepared=True)
            cur.execute(sql, params or ())
            rows = cur.fetchall() if cur.description else cur.rowcount
            conn.commit()
            return rows
        finally:
            conn.close()
    import pymysql

    conn = pymysql.connect(
        host=HOST, port=PORT, user=USER, password=PASSWORD, database=DATABASE,
        connect_timeout=10, autocommit=True,
    )
    try:
        cur = conn.cursor()
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else cur.rowcount
    finally:
        conn.close()


def redis_(req):
    import redis

    r = redis.Redis(
        host=HOST, port=PORT, password=PASSWORD or None, protocol=req.get("resp", 2),
        socket_timeout=10, decode_responses=True,
    )
    try:
        if req.get("pipeline"):
            # Every command is sent before any reply is read; each reply, error or
            # not, must come back in its command's place.
            p = r.pipeline(transaction=False)
            for c in req["cmds"]:
                p.execute_command(*c)
            return [
                "error: %s" % x if isinstance(x, Exception) else x
                for x in p.execute(raise_on_error=False)
            ]
        return [r.execute_command(*c) for c in req["cmds"]]
    finally:
        r.close()


def memcached(req):
    from pymemcache.client.base import Client

    c = Client((HOST, PORT), connect_timeout=10, timeout=10)
    try:
        op = req["op"]
        if op == "set":
            return c.set(req["key"], req["value"], noreply=req.get("noreply", False))
        if op == "get":
            return c.get(req["key"])
        if op == "delete":
            return c.delete(req["key"], noreply=False)
        raise ValueError("unknown op " + op)
    finally:
        c.close()


def kafka_(req):
    """Kafka through kafka-python (the default) or confluent-kafka (driver=confluent).

    op=create: topics=[...] are created (one partition each).
    op=produce: one record per item of values=[...] (key=), acks= (default "all"),
      idempotent= (default False: retries=0, so an injected error surfaces at once);
      answers [{"topic", "partition", "offset"}, ...].
    op=consume: up to count= records (default 1) of topic= from the partitions
      assigned by hand (no group join, so no rebalance wait), starting at the group's
      committed offset (else the earliest), committing what it read; waits up to
      timeout_ms= (default 5000) in all; answers [[key, value], ...].
    """
    op = req["op"]
    if req.get("driver") == "confluent":
        return confluent(req)
    import kafka
    from kafka.errors import TopicAlreadyExistsError

    boot = "%s:%d" % (HOST, PORT)
    if op == "create":
        from kafka.admin import KafkaAdminClient, NewTopic

        a = KafkaAdminClient(bootstrap_servers=boot, request_timeout_ms=10000)
        try:
            for t in req["topics"]:
                try:
                    a.create_topics([NewTopic(t, 1, 1)])
                except TopicAlreadyExistsError:
                    pass
            return True
        finally:
            a.close()
    if op == "produce":
        conf = dict(bootstrap_servers=boot, request_timeout_ms=req.get("request_timeout_ms", 10000),
                    max_block_ms=10000, linger_ms=0)
        if req.get("idempotent"):
            conf.update(enable_idempotence=True)
        else:
            conf.update(enable_idempotence=False, retries=0, acks=req.get("acks", "all"))
        p = kafka.KafkaProducer(**conf)
        try:
            out = []
            for v in req["values"]:
                key = req.get("key")
                f = p.send(req["topic"], v.encode(), key=key.encode() if key else None)
                if conf.get("acks") == 0:
                    p.flush(10)
                    out.append(None)
                    continue
                m = f.get(timeout=15)
                out.append({"topic": m.topic, "partition": m.partition, "offset": m.offset})
            return out
        finally:
            p.close(timeout=5)
    if op == "consume":
        import time
        from kafka import TopicPartition

        c = kafka.KafkaConsumer(bootstrap_servers=boot, group_id=req["group"],
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                request_timeout_ms=10000, fetch_max_wait_ms=200)
        try:
            tps = [TopicPartition(req["topic"], p) for p in sorted(c.partitions_for_topic(req["topic"]) or [])]
            if not tps:
                raise ValueError("topic %s does not exist" % req["topic"])
            c.assign(tps)
            want = req.get("count", 1)
            deadline = time.time() + req.get("timeout_ms", 5000) / 1000.0
            got = []
            while len(got) < want and time.time() < deadline:
                for recs in c.poll(timeout_ms=200).values():
                    for r in recs:
                        got.append([r.key.decode() if r.key else None, r.value.decode()])
            c.commit()
            return got
        finally:
            c.close(autocommit=False)
    raise ValueError("unknown op " + op)


def confluent(req):
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    boot = "%s:%d" % (HOST, PORT)
    op = req["op"]
    if op == "produce":
        p = Producer({"bootstrap.servers": boot, "enable.idempotence": bool(req.get("idempotent")),
                      "acks": req.get("acks", "all"), "retries": 0 if not req.get("idempotent") else 5,
                      "message.timeout.ms": 10000, "linger.ms": 0})
        out = []
        errors = []

        def done(err, m):
            if err is not None:
                errors.append(str(err))
            else:
                out.append({"topic": m.topic(), "partition": m.partition(), "offset": m.offset()})

        for v in req["values"]:
            p.produce(req["topic"], v.encode(), req.get("key"), on_delivery=done)
            p.flush(15)
        if errors:
            raise KafkaException(errors[0])
        return out
    if op == "consume":
        import time

        c = Consumer({"bootstrap.servers": boot, "group.id": req["group"],
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "fetch.wait.max.ms": 200})
        try:
            md = c.list_topics(req["topic"], timeout=10).topics[req["topic"]]
            if md.error is not None:
                raise KafkaException(md.error)
            c.assign([TopicPartition(req["topic"], p) for p in sorted(md.partitions)])
            want = req.get("count", 1)
            deadline = time.time() + req.get("timeout_ms", 5000) / 1000.0
            got = []
            while len(got) < want and time.time() < deadline:
                m = c.poll(0.2)
                if m is None:
                    continue
                if m.error() is not None:
                    raise KafkaException(m.error())
                got.append([m.key().decode() if m.key() else None, m.value().decode()])
            if got:
                c.commit(asynchronous=False)
            return got
        finally:
            c.close()
    raise ValueError("unknown op " + op)


def mongodb(req):
    import pymongo

    # Retries off, so the application sees each fault itself: with pymongo's
    # defaults a read that hits a dropped connection or a retryable error code is
    # sent once more.
    c = pymongo.MongoClient(
        host=HOST, port=PORT, directConnection=True, retryReads=False, retryWrites=False,
        serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, socketTimeoutMS=10000,
    )
    try:
        db = c[DATABASE or "test"]
        coll = db[req.get("collection", "orders")]
        op, flt = req["op"], req.get("filter", {})
        if op == "insert":
            return str(coll.insert_one(req["document"]).inserted_id)
        if op == "insert_many":
            return len(coll.insert_many(req["documents"]).inserted_ids)
        if op == "find":
            return list(coll.find(flt, {"_id": 0}).sort("n", 1))
        if op == "update":
            return coll.update_many(flt, req["update"]).modified_count
        if op == "delete":
            return coll.delete_many(flt).deleted_count
        if op == "count":
            return coll.count_documents(flt)
        if op == "command":
            return db.command(req["command"])
        raise ValueError("unknown op " + op)
    finally:
        c.close()


def amqp(req):
    """One pika BlockingConnection per operation. `setup` declares queues, exchanges
    and bindings first; then `op`:
    - publish: `messages` ([routing_key, body] pairs) to `exchange`, with publisher
      confirms unless `confirm` is false (then a round trip after the publishes
      makes the broker's reaction, if any, surface here);
    - get: one Basic.Get on `queue` (`ack`: acknowledged by the client after
      receipt, else auto-ack), None on an empty queue;
    - consume: up to `count` deliveries from `queue` within `wait` seconds, each
      acknowledged.
    """
    import pika

    params = pika.ConnectionParameters(
        host=HOST, port=PORT, virtual_host=DATABASE or "/",
        credentials=pika.PlainCredentials(USER or "guest", PASSWORD or "guest"),
        connection_attempts=1, socket_timeout=10, blocked_connection_timeout=10,
        heartbeat=0,
    )
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        for q in req.get("queues", []):
            ch.queue_declare(q)
        for ex, kind in req.get("exchanges", []):
            ch.exchange_declare(ex, exchange_type=kind)
        for q, ex, key in req.get("bindings", []):
            ch.queue_bind(q, ex, routing_key=key)
        op = req["op"]
        if op == "setup":
            return True
        if op == "publish":
            confirm = req.get("confirm", True)
            if confirm:
                ch.confirm_delivery()
            for key, body in req["messages"]:
                ch.basic_publish(req.get("exchange", ""), key, body.encode(),
                                 mandatory=req.get("mandatory", False))
            if not confirm:
                # A round trip: a connection or channel closed meanwhile shows here.
                ch.queue_declare("", exclusive=True)
            return True
        if op == "get":
            ack = req.get("ack", False)
            method, _props, body = ch.basic_get(req["queue"], auto_ack=not ack)
            if method is None:
                return None
            if ack:
                ch.basic_ack(method.delivery_tag)
            return {"body": body.decode(), "routing_key": method.routing_key,
                    "redelivered": method.redelivered}
        if op == "consume":
            out = []
            for method, _props, body in ch.consume(req["queue"], inactivity_timeout=req.get("wait", 2)):
                if method is None:
                    break
                ch.basic_ack(method.delivery_tag)
                out.append({"body": body.decode(), "routing_key": method.routing_key,
                            "redelivered": method.redelivered})
                if len(out) >= req.get("count", 1):
                    break
            ch.cancel()
            return out
        raise ValueError("unknown op " + op)
    finally:
        try:
            conn.close()
        except Exception:
            # Already closed by the broker (or a rule): the operation's own outcome
            # is the answer.
            pass


HANDLERS = {
    "postgres": postgres,
    "mysql": mysql,
    "redis": redis_,
    "memcached": memcached,
    "mongodb": mongodb,
    "amqp": amqp,
    "kafka": kafka_,
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer(200, {"ok": True})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            result = {"ok": True, "result": jsonable(HANDLERS[KIND](json.loads(body)))}
        except Exception as e:  # the driver's error is the answer
            result = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
            if KIND == "mongodb" and getattr(e, "code", None) is not None:
                result["code"] = e.code
        self.answer(200, result)

    def answer(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print("sut: %s through %s:%d" % (KIND, HOST, PORT), file=sys.stderr, flush=True)
    server.serve_forever()
