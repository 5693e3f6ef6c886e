"""A proxy in front of the real provisioning server that loses answers: it terminates TLS with the server's own
certificate (secrets/server.pem, so a host pinning the cluster CA accepts it), forwards every request unchanged
(a host's signature covers method, path and body, all kept), and for the first `drop_enrol` enrolments closes the
connection instead of relaying the server's answer: the server has granted, the host never hears of it."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.integration.kiln_server import RunningServer

HOP_BY_HOP = {"connection", "content-length", "date", "server", "transfer-encoding", "keep-alive"}


@dataclass
class LossyProxy:
    server: RunningServer
    drop_enrol: int = 0
    url: str = ""
    relayed: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, status (0: lost)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def forward(self, h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
        upstream = urlsplit(self.server.tls_url)
        conn = http.client.HTTPSConnection(
            upstream.hostname or "", upstream.port, context=self.server.tls_context(), timeout=10
        )
        try:
            conn.request(h.command, h.path, body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        with self._lock:
            lose = h.path == "/v1/enrol" and self.drop_enrol > 0
            self.drop_enrol -= int(lose)
            self.relayed.append((h.command, h.path, 0 if lose else answer.status))
        if lose:
            h.close_connection = True
            return
        h.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in HOP_BY_HOP:
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @contextlib.contextmanager
    def running(self) -> Iterator[LossyProxy]:
        proxy = self

        class H(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                proxy.forward(self)

            do_GET = do_POST = _any

            def log_message(self, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server.secrets.server_pem, self.server.secrets.server_key)
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self.url = f"https://127.0.0.1:{httpd.server_address[1]}"
        try:
            yield self
        finally:
            httpd.shutdown()
            httpd.server_close()
