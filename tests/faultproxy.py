"""An HTTP proxy on 127.0.0.1 that breaks chosen requests to a real S3 server (moto).

Clients reach it the way they reach S3 (``AWS_ENDPOINT_URL``); every request is forwarded
to the server unless a rule matches its path:

- ``("503", n)``: the first ``n`` requests get ``503 SlowDown`` (a throttled or briefly
  unavailable store; S3 clients retry it);
- ``("403", -1)``: every GET gets ``403 AccessDenied`` while HEAD answers (a shard that
  stays unreadable: an object encrypted with a key the reader may not use, or one removed
  after the run listed it);
- ``("cut", n)``: the first ``n`` GETs get the response headers and half the body, then the
  connection closes (a read that fails mid-stream).

``hits`` counts the requests each rule saw.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error>"
)


class FaultProxy:
    def __init__(self, upstream: str, rules: dict[str, tuple[str, int]]) -> None:
        up = urlsplit(upstream)
        self.upstream = (up.hostname or "127.0.0.1", up.port or 80)
        self.rules = dict(rules)
        self.left = {k: n for k, (_, n) in rules.items()}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _rule(self, method: str, path: str) -> str | None:
        with self._lock:
            for key, (mode, _) in self.rules.items():
                if key not in path or (mode in ("cut", "403") and method != "GET"):
                    continue
                self.hits[key] += 1
                if self.left[key] == 0:
                    return None
                self.left[key] -= 1
                return mode
        return None

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        mode = self._rule(h.command, h.path)
        if mode in ("503", "403"):
            code, message = ("SlowDown", "Please reduce your request rate") if mode == "503" else (
                "AccessDenied", "Access Denied")  # fmt: skip
            data = ERROR.format(code=code, message=message).encode()
            h.send_response(int(mode))
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(0 if h.command == "HEAD" else len(data)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        headers = {k: v for k, v in h.headers.items() if k.lower() != "connection"}
        conn.request(h.command, h.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                h.send_header(k, v)
        if h.command == "HEAD":
            h.send_header("Content-Length", resp.getheader("Content-Length") or "0")
            h.end_headers()
        elif mode == "cut":
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
        else:
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        conn.close()
