"""A system under test for the NATS spec: a service holding one long-lived connection
made by nats-py (the official asyncio client) to $TARGET, as a real NATS service
would, with an HTTP API to drive it and to see what it saw.

Environment: PORT, TARGET (host:port), SUBSCRIBE (a subject to record deliveries
of, wildcards allowed), RESPOND (a subject to answer requests on with "re: " and
the request's data).

POST /run with a JSON body:
- {"op": "publish", "subject", "data"}: publish and flush (a PING round trip);
  answers {"ok": true, "result": {"ms": elapsed, "at": wall-clock start,
  "errors": [errors reported meanwhile]}}
- {"op": "publish_later", "subject", "data", "after"}: publish `after` seconds from
  now, answering at once (for a spec step that subscribes first)
- {"op": "request", "subject", "data", "timeout"}: the reply's subject and data
- {"op": "received", "count": n, "timeout": s}: the deliveries recorded so far
  ({"subject", "data", "at": wall-clock arrival}), waiting up to `timeout` for at
  least `count`
- {"op": "errors"}: every asynchronous error the client reported, and whether it
  is still connected
"""

import asyncio
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import nats

TARGET = os.environ["TARGET"]
SUBSCRIBE = os.environ.get("SUBSCRIBE", "")
RESPOND = os.environ.get("RESPOND", "")

loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
received = []
errors = []
nc = None


async def start():
    global nc

    async def on_error(e):
        errors.append(str(e))

    nc = await nats.connect(
        "nats://" + TARGET,
        error_cb=on_error,
        connect_timeout=5,
        reconnect_time_wait=0.2,
        max_reconnect_attempts=-1,
    )
    if SUBSCRIBE:

        async def on_msg(m):
            received.append(
                {"subject": m.subject, "data": m.data.decode("utf-8", "replace"), "at": time.time()}
            )

        await nc.subscribe(SUBSCRIBE, cb=on_msg)
    if RESPOND:

        async def on_request(m):
            await m.respond(b"re: " + m.data)

        await nc.subscribe(RESPOND, cb=on_request)
    await nc.flush(timeout=5)


def call(coro, timeout=30):
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


async def publish(req):
    before = len(errors)
    at = time.time()
    start = time.monotonic()
    await nc.publish(req["subject"], req.get("data", "").encode())
    await nc.flush(timeout=10)
    ms = int((time.monotonic() - start) * 1000)
    # An -ERR the server sent before its PONG has been handed to the error callback.
    await asyncio.sleep(0.05)
    return {"ms": ms, "at": at, "errors": errors[before:]}


async def request(req):
    m = await nc.request(req["subject"], req.get("data", "").encode(), timeout=req.get("timeout", 5))
    return {"subject": m.subject, "data": m.data.decode("utf-8", "replace")}


async def wait_received(req):
    deadline = time.monotonic() + req.get("timeout", 0)
    while len(received) < req.get("count", 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return list(received)


def run(req):
    op = req["op"]
    if op == "publish":
        return call(publish(req))
    if op == "publish_later":

        async def later():
            await asyncio.sleep(req.get("after", 0.5))
            await nc.publish(req["subject"], req.get("data", "").encode())
            await nc.flush(timeout=10)

        asyncio.run_coroutine_threadsafe(later(), loop)
        return True
    if op == "request":
        return call(request(req))
    if op == "received":
        return call(wait_received(req))
    if op == "errors":
        return {"errors": list(errors), "connected": nc.is_connected}
    raise ValueError("unknown op " + op)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer(200, {"ok": True})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            result = {"ok": True, "result": run(json.loads(body))}
        except Exception as e:  # the client's error is the answer
            result = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
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
    call(start(), 20)
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print("nats sut: through %s" % TARGET, file=sys.stderr, flush=True)
    server.serve_forever()
