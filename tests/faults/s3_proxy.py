"""A fault-injecting HTTP proxy on loopback in front of an S3 endpoint (moto's server), as object storage behaves
under load: it answers 503 SlowDown to a seeded fraction of requests without forwarding them, and forwards a
seeded fraction of writes (PUT, POST, DELETE) but drops their reply (closes the connection unanswered), so the
write is carried out and the client does not know it.

Bounded: it listens on 127.0.0.1 only, injects at most `max_faults` faults, and shuts itself down after
`lifetime_s` even if its user never stops it.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
WRITES = ("PUT", "POST", "DELETE")
HOP_BY_HOP = ("connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection")


class FaultyS3Proxy:
    """`with FaultyS3Proxy(upstream, seed, throttle=0.1, drop_writes=0.2) as proxy:` point clients at `proxy.url`;
    `proxy.counts` tells requests, throttled and dropped; `proxy.written` the paths (/bucket/key) of the writes
    it forwarded, with how often."""

    def __init__(self, upstream: str, seed: int, throttle: float, drop_writes: float, max_faults: int = 2000,
                 lifetime_s: float = 600.0):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.throttle, self.drop_writes, self.max_faults = throttle, drop_writes, max_faults
        self.counts: Counter[str] = Counter()
        self.written: Counter[str] = Counter()
        self._rng, self._lock = random.Random(seed), threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Relay)
        self._server.daemon_threads = True
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3 fault proxy", daemon=True)
        self._timer = threading.Timer(lifetime_s, self._server.shutdown)
        self._timer.daemon = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def draw(self, method: str) -> str | None:
        """This request's fault: "throttle", "drop" or None."""
        with self._lock:
            self.counts["requests"] += 1
            if self.counts["throttled"] + self.counts["dropped"] >= self.max_faults:
                return None
            fault = ("throttle" if self._rng.random() < self.throttle else
                     "drop" if method in WRITES and self._rng.random() < self.drop_writes else None)
            if fault:
                self.counts["throttled" if fault == "throttle" else "dropped"] += 1
            return fault

    def __enter__(self) -> FaultyS3Proxy:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _relay(self) -> None:
        body, proxy = self._body(), self.server.proxy
        fault = proxy.draw(self.command)
        if fault == "throttle":
            self._answer(503, [("Content-Type", "application/xml")], SLOW_DOWN)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            reply = upstream.getresponse()
            data = reply.read()
        finally:
            upstream.close()
        if self.command in WRITES:
            with proxy._lock:
                proxy.written[urllib.parse.urlsplit(self.path).path] += 1
        if fault == "drop":  # carried out; the client never hears of it
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        kept = [(k, v) for k, v in reply.getheaders()
                if k.lower() not in HOP_BY_HOP and (self.command == "HEAD" or k.lower() != "content-length")]
        self._answer(reply.status, kept, data)

    def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response_only(status)
        for k, v in headers:
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        elif not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", "0")
        self.end_headers()
        if self.command == "HEAD":
            return
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay
