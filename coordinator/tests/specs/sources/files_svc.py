"""An HTTP service that appends what it is sent to a log file and reports counters.

POST /log appends the body as one line to $TMPDIR/app.log; POST /rotate renames the
log away (the next line starts a new file); GET /metrics answers JSON counters;
GET /broken answers 500.
"""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = os.path.join(os.environ["TMPDIR"], "app.log")
count = {"lines": 0}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/metrics":
            return self.reply(200, json.dumps({"lines": count["lines"], "status": "ok"}))
        if self.path == "/broken":
            return self.reply(500, "broken")
        self.reply(200, "ok")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if self.path == "/rotate":
            os.rename(LOG, LOG + ".1")
        else:
            with open(LOG, "a") as f:
                f.write(body + "\n")
            count["lines"] += 1
        self.reply(200, "ok")


ThreadingHTTPServer(("127.0.0.1", 8000), Handler).serve_forever()
