"""A real HTTP server on 127.0.0.1 for tests of anything that talks to a network.

Tests script its behaviour with a handler function per path prefix; the server
records every request so tests can assert on counts, concurrency and headers.

    with LocalServer() as srv:
        srv.route("/img/", lambda req: Reply(200, body=jpeg_bytes, headers={"Content-Type": "image/jpeg"}))
        url = srv.url("/img/a.jpg")
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | dict | list = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (slow server)
    truncate_to: int | None = None  # send a Content-Length larger than the body, then hang up

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        body = self.body
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        return body, headers


Handler = Callable[[Request], Reply]


class LocalServer:
    def __init__(self, host: str = "127.0.0.1", tls: "ssl.SSLContext | None" = None) -> None:
        """``host``: any loopback address (127.0.0.0/8), e.g. 127.0.0.2 for a second "machine".
        ``tls``: a server-side SSLContext to serve HTTPS with (``server_names`` records each handshake's SNI)."""
        self.host = host
        self.tls = tls
        self.server_names: list = []
        self.routes: list[tuple[str, Handler]] = []
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.sent: dict[str, tuple[int, int]] = {}  # path -> (body bytes written, body length), once a reply ends
        self._lock = threading.Lock()
        server = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle on, loopback adds ~40 ms per reply.
            disable_nagle_algorithm = True

            def log_message(self, *a):  # keep test output clean
                pass

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                req = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with server._lock:
                    server.requests.append(req)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    handler = next((h for p, h in server.routes if self.path.startswith(p)), None)
                    reply = handler(req) if handler else Reply(404, b"no route")
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                    data, headers = reply.encoded()
                    self.send_response(reply.status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    if reply.truncate_to is not None:
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data[: reply.truncate_to])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    written = 0
                    try:  # in pieces, so a client that hangs up early shows in ``sent``
                        for i in range(0, len(data), 1 << 16):
                            self.wfile.write(data[i:i + (1 << 16)])
                            written += len(data[i:i + (1 << 16)])
                    finally:
                        with server._lock:
                            server.sent[self.path] = (written, len(data))
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server._lock:
                        server.in_flight -= 1

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        class _Server(ThreadingHTTPServer):
            request_queue_size = 128  # bursts of new connections from concurrent clients

            def handle_error(self, request, client_address):
                # A client that hangs up early (a size cap, a timeout) breaks the final flush after our
                # handler returned; that is the behaviour under test, not a server fault worth a traceback.
                if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    return
                super().handle_error(request, client_address)

        self.httpd = _Server((host, 0), _H)
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def route(self, prefix: str, handler: Handler) -> None:
        """Register ``handler`` for paths starting with ``prefix`` (first match wins)."""
        self.routes.append((prefix, handler))

    def url(self, path: str = "/") -> str:
        return f"{'https' if self.tls is not None else 'http'}://{self.host}:{self.port}{path}"

    def count(self, prefix: str = "/") -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.path.startswith(prefix))

    def __enter__(self) -> "LocalServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def noise_jpeg(seed: int, height: int, width: int) -> bytes:
    """A distinct noise JPEG per seed (quality 80): images an image server can serve by number."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    rgb = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buf, "JPEG", quality=80)
    return buf.getvalue()
