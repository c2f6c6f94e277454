"""The keep-alive client's wire level (``providers/wire.py``): what it writes, what it
refuses to write, and how it reads replies that are odd or wrong."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration.llm.providers.async_http import AsyncKeepAliveClient
from orchestration.llm.providers.http import ConnectError, KeepAliveClient, ReadError, target_of
from orchestration.llm.providers.wire import Headers, request_head


class OneShot:
    """Accepts connections; reads each request whole (raw bytes kept); sends ``reply``."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.raw: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += conn.recv(65536)
                self.raw.append(head + b"\r\n\r\n" + body)
                conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client() -> Iterator[KeepAliveClient]:
    made = KeepAliveClient()
    yield made
    made.close()


@contextlib.contextmanager
def serving(reply: bytes) -> Iterator[OneShot]:
    server = OneShot(reply)
    try:
        yield server
    finally:
        server.close()


def assert_refused_and_dropped(reply: bytes, match: str, **options: Any) -> None:
    """A call answered with ``reply`` is a ReadError, and its connection is not kept."""
    with serving(reply) as server, contextlib.closing(KeepAliveClient(**options)) as client:
        with pytest.raises(ReadError, match=match):
            client.post_json(f"http://127.0.0.1:{server.port}/x", {}, {}, 2.0)
        assert client.open_connections == 0


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Seen: first\r\nx-seen: second\r\n\r\n{}"


@pytest.fixture
def ok_server() -> Iterator[OneShot]:
    with serving(OK) as server:
        yield server


def test_the_request_names_host_port_length_and_the_callers_headers(
        client: KeepAliveClient, ok_server: OneShot) -> None:
    response = client.post_json(f"http://127.0.0.1:{ok_server.port}/v1/x?a=1", {"k": "v"},
                                {"Authorization": "Bearer t"}, 2.0)

    assert response.status == 200 and response.json() == {}
    head, _, body = ok_server.raw[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/x?a=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{ok_server.port}" in lines
    assert "Content-Length: 9" in lines and "Authorization: Bearer t" in lines
    assert "Content-Type: application/json" in lines
    assert body == b'{"k":"v"}'
    # Header names in any case; the first of a repeated header, as http.client's get.
    assert response.headers.get("x-SEEN") == "first"
    assert response.headers.get("missing") is None


@pytest.mark.parametrize("name,value", [("X-Evil", "a\r\nInjected: yes"),
                                        ("X-Evil\r\nInjected", "yes"), ("X-Nul", "a\0b"),
                                        ("Bad:Name", "v")])
def test_a_header_that_could_inject_another_is_refused_and_nothing_is_sent(
        client: KeepAliveClient, ok_server: OneShot, name: str, value: str) -> None:
    with pytest.raises(ValueError, match="invalid HTTP header"):
        client.post_json(f"http://127.0.0.1:{ok_server.port}/x", {}, {name: value}, 2.0)
    assert ok_server.raw == [] and client.open_connections == 0


def test_a_url_path_with_a_space_or_control_character_is_refused(
        client: KeepAliveClient) -> None:
    with pytest.raises(ValueError, match="control character"):
        client.post_json("http://127.0.0.1:1/a b", {}, {}, 1.0)


def test_a_reply_that_is_not_http_is_a_read_error_and_the_connection_goes() -> None:
    assert_refused_and_dropped(b"SMTP ready\r\n\r\n", "Malformed")


def test_a_chunked_body_over_the_limit_is_refused_and_the_connection_goes() -> None:
    chunk = b"x" * 600
    reply = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             + (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
    assert_refused_and_dropped(reply, "over 1024 bytes", max_body=1024)


def test_request_head_default_port_and_ipv6_hosts() -> None:
    head = request_head("POST", "/p", "[::1]:8080", 0, {})
    assert head.startswith(b"POST /p HTTP/1.1\r\nHost: [::1]:8080\r\n")
    assert head.endswith(b"Content-Length: 0\r\n\r\n")
    assert target_of("http://[::1]:8080/p").authority == "[::1]:8080"
    assert target_of("https://api.example.com/v1").authority == "api.example.com"
    assert target_of("http://h:80/").authority == "h"
    headers = Headers({"content-type": "application/json"})
    assert headers.get("Content-Type") == "application/json"


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl, as on the CI machine)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def _tls_server(cert: Path, key: Path) -> tuple[socket.socket, list[bytes]]:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    sock = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                raw, _ = sock.accept()
            except OSError:
                return
            try:
                with server_ctx.wrap_socket(raw, server_side=True) as conn:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    seen.append(data)
                    conn.sendall(OK)
            except (ssl.SSLError, OSError):
                continue  # a client that refused our certificate

    threading.Thread(target=serve, daemon=True).start()
    return sock, seen


def _post_once(kind: str, url: str, **options: Any) -> Any:
    """One POST by a new client of ``kind`` (the threads' or the event loop's), then closed."""
    if kind == "threads":
        client = KeepAliveClient(**options)
        try:
            return client.post_json(url, {}, {}, 5.0)
        finally:
            client.close()
    on_loop = AsyncKeepAliveClient(**options)

    async def call() -> Any:
        try:
            return await on_loop.post_json(url, {}, {}, 5.0)
        finally:
            on_loop.close()

    return asyncio.run(call())


@pytest.mark.parametrize("kind", ["threads", "loop"])
def test_https_with_a_trusted_certificate(tls_files: tuple[Path, Path], kind: str) -> None:
    cert, key = tls_files
    sock, seen = _tls_server(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        response = _post_once(kind, f"https://127.0.0.1:{sock.getsockname()[1]}/v1",
                              ssl_context=trusting)
        assert response.status == 200 and response.json() == {}
        assert seen and seen[0].startswith(b"POST /v1 HTTP/1.1\r\n")
    finally:
        sock.close()


@pytest.mark.parametrize("kind", ["threads", "loop"])
def test_https_with_an_untrusted_certificate_is_a_connect_error(
        tls_files: tuple[Path, Path], kind: str) -> None:
    cert, key = tls_files
    sock, seen = _tls_server(cert, key)
    try:
        # The system's trust store: a self-signed certificate fails.
        with pytest.raises(ConnectError, match="SSLCertVerificationError"):
            _post_once(kind, f"https://127.0.0.1:{sock.getsockname()[1]}/v1")
        assert seen == []
    finally:
        sock.close()
