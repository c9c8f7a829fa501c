"""The containers chapter's API: POST /data?key=K&value=V stores a value in
PostgreSQL and caches it in Redis; GET /data?key=K reads it back (cache first);
GET /health answers once both are reachable. A database error is a 503."""
import http.server
import json
import os
import urllib.parse

import psycopg2
import redis

DB = os.environ["DATABASE_URL"]
CACHE = os.environ.get("REDIS_ADDR", "cache:6379")


def db():
    return psycopg2.connect(DB, connect_timeout=5)


def cache():
    host, port = CACHE.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), socket_timeout=5)


def setup():
    with db() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS data (key text PRIMARY KEY, value text)")


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        try:
            if url.path == "/health":
                setup()
                cache().ping()
                return self.answer(200, {"ok": True})
            if url.path == "/data":
                hit = cache().get(q["key"])
                if hit is not None:
                    return self.answer(200, {"value": hit.decode(), "from": "cache"})
                with db() as conn, conn.cursor() as cur:
                    cur.execute("SELECT value FROM data WHERE key = %s", (q["key"],))
                    row = cur.fetchone()
                if row is None:
                    return self.answer(404, {"error": "no such key"})
                return self.answer(200, {"value": row[0], "from": "db"})
            return self.answer(404, {"error": "no such path"})
        except Exception as e:  # the fault under test shows up here
            return self.answer(503, {"error": f"{type(e).__name__}: {e}"})

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path != "/data":
            return self.answer(404, {"error": "no such path"})
        try:
            with db() as conn, conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO data (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    (q["key"], q["value"]),
                )
            cache().set(q["key"], q["value"])
            return self.answer(200, {"stored": q["key"]})
        except Exception as e:
            return self.answer(503, {"error": f"{type(e).__name__}: {e}"})

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
