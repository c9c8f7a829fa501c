"""A system under test for the gRPC specs: a small HTTP API whose handlers call a
gRPC service with Python grpcio (a channel per request, so a dropped connection is
seen by the calls of that request only), or an HTTP/2 (h2c) service with curl
--http2-prior-knowledge, through the address in $TARGET.

POST /run with a JSON body runs the operations it lists and answers 200 with
{"ok": true, "result": [...]} where each call's outcome is
{"ok": true, "result": HEX} (a stream: a list of HEX),
{"ok": false, "code": "UNAVAILABLE", "details": "...", "ms": ...}, or for curl
{"status": 200, "version": "2", "body": "..."}.

Request: {"calls": [{"method": "/demo.Echo/Say", "body": HEX, "timeout": 5}]};
"stream": "server" (or true) for a server stream, "client" or "bidi" with
"bodies": [HEX, ...] for the others. or {"curl": [{"method": "POST", "path": "/x", "body": HEX, "headers": {...}}]}.

Environment: PORT, TARGET.
"""

import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

TARGET = os.environ["TARGET"]


def grpc_calls(calls):
    out = []
    with grpc.insecure_channel(TARGET) as channel:
        for c in calls:
            body = bytes.fromhex(c.get("body", ""))
            started = time.monotonic()
            try:
                stream = c.get("stream")
                timeout = c.get("timeout", 10)
                bodies = [bytes.fromhex(b) for b in c.get("bodies", [])]
                if stream in (True, "server"):
                    call = channel.unary_stream(c["method"])
                    result = [m.hex() for m in call(body, timeout=timeout)]
                elif stream == "client":
                    result = channel.stream_unary(c["method"])(iter(bodies), timeout=timeout).hex()
                elif stream == "bidi":
                    call = channel.stream_stream(c["method"])
                    result = [m.hex() for m in call(iter(bodies), timeout=timeout)]
                else:
                    result = channel.unary_unary(c["method"])(body, timeout=c.get("timeout", 10)).hex()
                out.append({"ok": True, "result": result, "ms": int((time.monotonic() - started) * 1000)})
            except grpc.RpcError as e:
                out.append({
                    "ok": False,
                    "code": e.code().name,
                    "details": e.details(),
                    "ms": int((time.monotonic() - started) * 1000),
                })
    return out


def curl_calls(calls):
    out = []
    for c in calls:
        args = ["curl", "-sS", "--http2-prior-knowledge", "-X", c.get("method", "GET"),
                "-o", "-", "-w", "\n%{http_code} %{http_version}", "--max-time", "10"]
        if "body" in c:
            args += ["--data-binary", "@-"]
        for k, v in c.get("headers", {}).items():
            args += ["-H", "%s: %s" % (k, v)]
        args.append("http://%s%s" % (TARGET, c["path"]))
        started = time.monotonic()
        p = subprocess.run(args, input=bytes.fromhex(c.get("body", "")), capture_output=True)
        ms = int((time.monotonic() - started) * 1000)
        if p.returncode != 0:
            out.append({"ok": False, "error": "curl exit %d: %s" % (p.returncode, p.stderr.decode().strip()), "ms": ms})
            continue
        body, _, tail = p.stdout.rpartition(b"\n")
        status, version = tail.decode().split()
        out.append({"ok": True, "status": int(status), "version": version,
                    "body": body.decode("utf-8", "replace"), "hex": body.hex(), "ms": ms})
    return out


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer(200, {"ok": True})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        try:
            if "curl" in req:
                result = {"ok": True, "result": curl_calls(req["curl"])}
            else:
                result = {"ok": True, "result": grpc_calls(req["calls"])}
        except Exception as e:  # a bug in the request, not a gRPC outcome
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
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print("grpc_sut: through %s" % TARGET, file=sys.stderr, flush=True)
    server.serve_forever()
