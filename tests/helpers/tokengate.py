"""A bearer-token gate in front of a registry, as Docker Hub and most clouds run them.

Requests to /v2/ without a valid token get 401 with a Bearer challenge that
points at /token; /token hands out a token for the right basic credentials;
requests with a token are passed to the real registry behind.
"""

from __future__ import annotations

import base64
import http.client
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from tests.helpers.registry import free_port


class TokenGate:
    def __init__(self, backend: str, user: str, password: str) -> None:
        self.backend = backend
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tokens: set[str] = set()
        self.token_requests = 0
        gate = self
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path == "/token":
                    gate.token_requests += 1
                    if self.headers.get("Authorization") != expected:
                        self._reply(401, b'{"errors":[{"code":"DENIED"}]}')
                        return
                    scope = parse_qs(url.query).get("scope", [""])[0]
                    if not scope.startswith("repository:"):
                        self._reply(400, b"missing scope")
                        return
                    token = secrets.token_hex(16)
                    gate.tokens.add(token)
                    self._reply(200, f'{{"token": "{token}"}}'.encode())
                    return
                auth = self.headers.get("Authorization", "")
                if not auth.startswith("Bearer ") or auth[7:] not in gate.tokens:
                    repo = url.path.split("/manifests/")[0].split("/blobs/")[0][len("/v2/"):]
                    challenge = (f'Bearer realm="http://{gate.address}/token",service="gate",'
                                 f'scope="repository:{repo}:pull"')
                    self._reply(401, b"{}", {"WWW-Authenticate": challenge})
                    return
                self._proxy()

            def _proxy(self) -> None:
                conn = http.client.HTTPConnection(gate.backend, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("accept", "range")}
                conn.request("GET", self.path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                extra = {k: v for k, v in response.getheaders()
                         if k.lower() in ("content-type", "docker-content-digest")}
                self._reply(response.status, body, extra)
                conn.close()

            def _reply(self, status: int, body: bytes,
                       headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
