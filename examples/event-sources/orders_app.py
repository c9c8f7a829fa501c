"""An orders service for the event-sources example: POST /orders stores the order in
PostgreSQL (psycopg) and, only once the row is committed, publishes an
`order-events` record to Kafka (kafka-python). It logs a JSON line per request.

Environment: PORT, DB (host:port), BROKER (host:port), PGPASSWORD.
"""

import json
import os
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
from kafka import KafkaProducer

DB_HOST, DB_PORT = os.environ["DB"].rsplit(":", 1)
producer = KafkaProducer(bootstrap_servers=os.environ["BROKER"], acks="all", retries=0)


def log(level, msg, **kw):
    print(json.dumps({"level": level, "msg": msg, **kw}), flush=True)


def db():
    return psycopg.connect(
        host=DB_HOST, port=int(DB_PORT), user="postgres", dbname="postgres",
        autocommit=True, connect_timeout=5,
    )


with db() as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY, sku text, qty int)")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.answer(200, {"ok": True})

    def do_POST(self):
        order = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        order_id = order.get("id") or uuid.uuid4().hex[:8]
        try:
            with db() as conn:
                conn.execute(
                    "INSERT INTO orders (id, sku, qty) VALUES (%s, %s, %s)",
                    (order_id, order.get("sku", ""), order.get("qty", 1)),
                )
        except psycopg.Error as e:
            log("ERROR", "order not stored", order_id=order_id, error=str(e).strip())
            return self.answer(500, {"error": str(e).strip()})
        event = {"order_id": order_id, "sku": order.get("sku", "")}
        producer.send("order-events", json.dumps(event).encode(), key=order_id.encode()).get(timeout=10)
        log("INFO", "order placed", order_id=order_id)
        self.answer(200, {"id": order_id})


log("INFO", "listening", port=int(os.environ["PORT"]))
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
