"""An HTTP service with two bugs worth diagnosing: POST /save ignores write errors
and answers 200 anyway, and GET /crash makes the process exit."""
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/crash":
            os._exit(3)
        self.reply(200, b"ok")

    def do_POST(self):
        try:
            with open(os.path.join(os.environ["TMPDIR"], "saved"), "wb") as f:
                f.write(self.rfile.read(int(self.headers.get("content-length", 0))))
        except OSError:
            pass  # the bug: the error is swallowed
        self.reply(200, b"saved")

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", 8100), Handler).serve_forever()
