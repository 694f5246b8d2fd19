"""A real HTTP server for the demo corpus on 127.0.0.1, in a background thread.

It serves ``<corpus>/files`` by path, answers 500 and stalls on the paths ``special.json``
names, and 404 for everything else. It binds the loopback address only.

Its URLs name the preferred port (``demo.port``) even when that port is taken and the server
listens on another: ``connect_to`` then says where to connect instead (``fetch.connect_to``), so
the URL list, its hash and every stage computed from it stay the same from one run to the next.
"""

from __future__ import annotations

import json
import mimetypes
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    server: DemoHTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no wait on a delayed ACK between

    def log_message(self, format, *args):  # noqa: A002 - the demo is quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        special = self.server.special.get(path)
        if special == "slow":
            # Stall past any sane fetch timeout, then give up without an answer.
            self.server.stall.wait(self.server.slow_seconds)
            self.close_connection = True
            return
        if special == "server_error":
            return self._reply(500, b"internal server error", "text/plain")
        file = (self.server.files / path.lstrip("/")).resolve()
        if not path.startswith("/data/") or self.server.files not in file.parents or not file.is_file():
            return self._reply(404, b"not found", "text/plain")
        kind = _TYPES.get(file.suffix, mimetypes.guess_type(file.name)[0] or "application/octet-stream")
        with file.open("rb") as f:  # from the page cache to the socket, as a file server sends it
            size = os.fstat(f.fileno()).st_size
            self._reply(200, None, kind, size, f)

    def _reply(self, code: int, body: bytes | None, kind: str, size: int = 0, file=None):
        """``body``, or ``size`` bytes of ``file`` sent with sendfile (what Content-Length says, even
        if the file grows meanwhile)."""
        try:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(size if body is None else len(body)))
            self.end_headers()
            if body is None:
                self.connection.sendfile(file, count=size)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


class DemoHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, corpus: Path, host: str, port: int, slow_seconds: float):
        self.corpus = Path(corpus)
        self.files = (self.corpus / "files").resolve()
        self.special = json.loads((self.corpus / "special.json").read_text())
        self.slow_seconds = slow_seconds
        self.stall = threading.Event()  # set on shutdown so stalled handlers end at once
        super().__init__((host, port), _Handler)


class DemoServer:
    """``with DemoServer(corpus) as srv: srv.base_url`` — started and stopped with the block."""

    def __init__(self, corpus: str | Path, host: str = "127.0.0.1", port: int = 0, slow_seconds: float = 8.0):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"demo.host must be a loopback address, got {host!r}")
        self.preferred_port = port
        if port and not _port_free(host, port):
            port = 0  # the preferred port is taken: any free one will do (see connect_to)
        self.httpd = DemoHTTPServer(Path(corpus), host, port, slow_seconds)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="zxl-demo-server", daemon=True)

    def _address(self) -> tuple[str, int]:
        """The host and port it listens on (an AF_INET or AF_INET6 server's: the host is a str)."""
        host, port = self.httpd.server_address[:2]
        assert isinstance(host, str) and isinstance(port, int), self.httpd.server_address
        return host, port

    @property
    def base_url(self) -> str:
        """Where the server listens."""
        host, port = self._address()
        return f"http://{_url_host(host)}:{port}"

    @property
    def url_base(self) -> str:
        """What its URLs name: the preferred port, whichever port it listens on."""
        host, port = self._address()
        return f"http://{_url_host(host)}:{self.preferred_port or port}"

    @property
    def connect_to(self) -> list[str]:
        """``fetch.connect_to`` for these URLs: [] when the server listens on the port they name."""
        host, port = self._address()
        if not self.preferred_port or self.preferred_port == port:
            return []
        return [f"{_url_host(host)}:{self.preferred_port}:{_url_host(host)}:{port}"]

    def start(self) -> DemoServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.stall.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def url_table(self) -> pa.Table:
        """The corpus's source table with ``file_url`` made absolute (on ``url_base``)."""
        src = pq.read_table(self.httpd.corpus / "source.parquet")
        urls = pc.binary_join_element_wise(self.url_base, src["file_url"], "")  # pyright: ignore[reportAttributeAccessIssue] - pyarrow.compute generates its functions at import
        return src.set_column(src.schema.get_field_index("file_url"), "file_url", urls)

    def write_urls(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.url_table(), path)
        return path


def serve_forever(server: DemoServer, urls_path: Path) -> None:
    """Run until interrupted (``zxl demo serve``)."""
    server.write_urls(urls_path)
    server.start()
    print(f"serving the demo corpus on {server.base_url}", flush=True)
    extra = "".join(f" --set fetch.connect_to=[{rule}]" for rule in server.connect_to)
    print(
        f"URL list: {urls_path}   (zxl curate --urls {urls_path} --set source.url_column=file_url "
        f"--set source.id_column=id{extra})",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
