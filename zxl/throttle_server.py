"""A throttling image host on 127.0.0.1, for tests and benchmarks of polite fetching.

``ThrottleServer`` is a real ``ThreadingHTTPServer`` in a daemon thread (like zxl's demo server),
started and stopped with a ``with`` block. It serves ``images`` (path → bytes) and behaves like a
booru's file server under load:

- ``max_in_flight``: a request that would make more than this many requests in flight at once
  (0 = no limit) is answered ``429 Too Many Requests`` at once, without holding;
- ``max_rate``: a request that would make more than ``max_rate`` admitted requests in the last second
  (a sliding window, half-open; 0 = no limit) is answered 429 the same way. For a rate under
  1/s the window is ``1 / max_rate`` seconds long and admits one request;
- every 429 carries ``Retry-After``: ``retry_after`` seconds as an integer (rounded up), an HTTP-date
  that far ahead with ``retry_after_date``, or no header with ``retry_after=None``;
- ``always_429``: paths that are always answered 429 (with the same Retry-After);
- ``transient[path] = k``: the first ``k`` admitted requests of that path get ``503 Service
  Unavailable`` without Retry-After; with ``k < 0`` the first ``-k`` are closed with a TCP reset
  and no response at all;
- ``block_after``: once the server has answered this many 429s in all, every later request gets
  ``403 Forbidden`` — a host that blocks an impolite client (0 = never);
- an admitted request for a path it does not serve gets 404; one that it serves is held
  ``hold_s`` seconds (so concurrency is observable), then answered 200 with the bytes,
  ``Content-Type`` from the suffix and ``Content-Length``.

A request is in flight from the moment its handler starts until its status line and headers are
sent (or, for a reset, until just before the connection closes): the client cannot have read them
yet, so the server's count never exceeds what the client really has outstanding, however late the
handler thread gets to run again after its last write.
``stats()`` counts what happened (see its docstring); ``reset_stats()`` starts the server afresh
(counters, transient failures, the block, the rate window) so one server can face several clients
in turn. ``jpeg_images`` makes a deterministic set of small, distinct JPEGs to serve.
"""

from __future__ import annotations

import collections
import email.utils
import io
import ipaddress
import math
import mimetypes
import socket
import struct
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".gif": "image/gif"}
# A request for a path that comes back sooner than this before the Retry-After the server gave for
# it ran out still counts as on time: the client's clock starts when it reads the 429, after ours.
EARLY_TOLERANCE_S = 0.01


def jpeg_images(n: int, size: tuple[int, int] = (256, 256), seed: int = 0, quality: int = 90) -> dict[str, bytes]:
    """``n`` distinct JPEGs, ``/0000.jpg`` … : a smooth random gradient with some noise, the same for
    the same ``seed``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    out = {}
    for i in range(n):
        freq, phase = rng.uniform(0.5, 5, (3, 2)), rng.uniform(0, 2 * np.pi, 3)
        base = np.stack([127 + 100 * np.sin(6 * (freq[c, 0] * x + freq[c, 1] * y) + phase[c]) for c in range(3)], -1)
        arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=quality)
        out[f"/{i:04d}.jpg"] = buf.getvalue()
    return out


class _State:
    """Everything the handlers share, under one lock."""

    def __init__(self, transient: Mapping[str, int]):
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)  # notified when no handler runs
        self.running = 0  # handlers that have not yet counted their response
        self.transient_config = dict(transient)
        self.in_flight = 0  # every request whose handler runs
        self.paths_in_flight: collections.Counter[str] = collections.Counter()
        self.admitted = 0  # of those, the ones not answered 429 or 403
        self.reset()

    def reset(self) -> None:
        self.peak_all = self.in_flight
        self.peak_all_paths = sorted(self.paths_in_flight.elements())
        self.peak_admitted = self.admitted
        self.requests = self.throttled = self.blocked = self.resets = self.early = 0
        self.throttled_by: collections.Counter[str] = collections.Counter()  # in_flight | rate | always
        self.codes: collections.Counter[int] = collections.Counter()  # responses written whole, by status
        self.per_path: collections.Counter[str] = collections.Counter()
        self.per_path_ok: collections.Counter[str] = collections.Counter()
        self.transient_left = dict(self.transient_config)
        self.window: collections.deque[float] = collections.deque()  # admission times in the rate window
        self.retry_at: dict[str, float] = {}  # path → when the Retry-After it was last given runs out
        self.first: float | None = None
        self.last: float | None = None


class _Handler(BaseHTTPRequestHandler):
    server: _ThrottleHTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no wait on a delayed ACK between

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        srv, st = self.server, self.server.state
        path = self.path.split("?", 1)[0]
        now = time.monotonic()
        with st.lock:
            st.running += 1
            st.in_flight += 1
            st.paths_in_flight[path] += 1
            if st.in_flight > st.peak_all:
                st.peak_all, st.peak_all_paths = st.in_flight, sorted(st.paths_in_flight.elements())
            st.requests += 1
            st.per_path[path] += 1
            st.first = now if st.first is None else st.first
            due = st.retry_at.get(path)
            if due is not None and now < due - EARLY_TOLERANCE_S:
                st.early += 1
            verdict = self._admit(now)
            if verdict == "ok":
                st.admitted += 1
                st.peak_admitted = max(st.peak_admitted, st.admitted)
                left = st.transient_left.get(path, 0)
                if left:
                    st.transient_left[path] = left - 1 if left > 0 else left + 1
                    verdict = "503" if left > 0 else "reset"
        code = 0  # what the client got: a status, or 0 (a reset, or it went away first)
        counted = [True]

        def done() -> None:
            """The request leaves the count once its headers are out (``_reply``) or just before a reset: the
            client may read them and send its next request before this thread runs again, and that one
            must not find it still counted."""
            if counted[0]:
                counted[0] = False
                with st.lock:
                    st.in_flight -= 1
                    st.paths_in_flight[path] -= 1
                    if not st.paths_in_flight[path]:
                        del st.paths_in_flight[path]
                    if verdict not in ("403", "429"):
                        st.admitted -= 1

        self._done = done
        try:
            if verdict == "403":
                code = 403 * self._reply(403, b"blocked: too many requests\n", "text/plain")
            elif verdict == "429":
                code = 429 * self._reply(429, b"too many requests\n", "text/plain", self._retry_after(path))
            elif verdict == "reset":
                self._reset()
            elif verdict == "503":
                code = 503 * self._reply(503, b"service unavailable\n", "text/plain")
            elif path not in srv.images:
                code = 404 * self._reply(404, b"not found\n", "text/plain")
            else:
                if srv.hold_s > 0:
                    srv.stopping.wait(srv.hold_s)
                body = srv.images[path]
                kind = _TYPES.get(Path(path).suffix.lower()) or mimetypes.guess_type(path)[0]
                code = 200 * self._reply(200, body, kind or "application/octet-stream")
        finally:
            done()
            with st.lock:
                st.codes[code] += 1
                if code == 200:
                    st.per_path_ok[path] += 1
                st.last = time.monotonic()
                st.running -= 1
                if not st.running:
                    st.idle.notify_all()

    def _admit(self, now: float) -> str:
        """'403', '429' or 'ok' for a request arriving at ``now`` (called under the lock)."""
        srv, st = self.server, self.server.state
        if srv.block_after and st.throttled >= srv.block_after:
            st.blocked += 1
            return "403"
        path = self.path.split("?", 1)[0]
        if srv.max_rate:
            while st.window and st.window[0] <= now - srv.window_s:
                st.window.popleft()
        if path in srv.always_429:
            over = "always"
        elif srv.max_in_flight and st.admitted >= srv.max_in_flight:
            over = "in_flight"
        elif srv.max_rate and len(st.window) >= srv.window_budget:
            over = "rate"
        else:
            over = ""
        if over:
            st.throttled += 1
            st.throttled_by[over] += 1
            if srv.retry_after is not None:
                st.retry_at[path] = now + math.ceil(srv.retry_after)
            return "429"
        if srv.max_rate:
            st.window.append(now)
        return "ok"

    def _retry_after(self, path: str) -> dict[str, str]:
        srv = self.server
        if srv.retry_after is None:
            return {}
        if srv.retry_after_date:  # whole seconds, rounded up: never sooner than retry_after
            return {"Retry-After": email.utils.formatdate(math.ceil(time.time() + srv.retry_after), usegmt=True)}
        return {"Retry-After": str(math.ceil(srv.retry_after))}

    def _reply(self, code: int, body: bytes, kind: str, headers: Mapping[str, str] = {}) -> bool:  # noqa: B006 - read only
        """Send a whole response; False when the client went away first."""
        try:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.flush()
            self._done()
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return False
        return True

    def _reset(self) -> None:
        """Close the connection with a TCP reset, no response."""
        with self.server.state.lock:
            self.server.state.resets += 1
        self.close_connection = True
        self._done()
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # linger 0: RST instead of FIN
        except OSError:
            pass


class _ThrottleHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # a client with many threads must not see refused or dropped connections

    def __init__(self, server: ThrottleServer, host: str, port: int):
        self.images = server.images
        self.max_in_flight = server.max_in_flight
        self.max_rate = server.max_rate
        self.window_s = max(1.0, 1.0 / server.max_rate) if server.max_rate else 1.0
        self.window_budget = max(1, math.floor(server.max_rate * self.window_s + 1e-9)) if server.max_rate else 0
        self.retry_after = server.retry_after
        self.retry_after_date = server.retry_after_date
        self.hold_s = server.hold_s
        self.always_429 = server.always_429
        self.block_after = server.block_after
        self.state = server.state
        self.stopping = threading.Event()  # set on stop: held responses end at once
        super().__init__((host, port), _Handler)


class ThrottleServer:
    """``with ThrottleServer(jpeg_images(20), max_in_flight=4) as srv: srv.urls()`` — see the module doc."""

    def __init__(
        self,
        images: Mapping[str, bytes],
        max_in_flight: int = 0,
        max_rate: float = 0.0,
        retry_after: float | None = 1.0,
        retry_after_date: bool = False,
        hold_s: float = 0.05,
        transient: Mapping[str, int] | None = None,
        always_429: frozenset[str] | set[str] = frozenset(),
        block_after: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        try:
            loopback = ipaddress.ip_address(host).version == 4 and ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"ThrottleServer listens on an IPv4 loopback address only, got {host!r}")
        if max_in_flight < 0 or max_rate < 0 or block_after < 0 or hold_s < 0:
            raise ValueError("max_in_flight, max_rate, block_after and hold_s must be >= 0")
        if retry_after is not None and retry_after < 0:
            raise ValueError(f"retry_after must be >= 0 or None, got {retry_after}")
        bad = [p for p in [*images, *(transient or {}), *always_429] if not p.startswith("/")]
        if bad:
            raise ValueError(f"paths must start with '/': {bad[:3]}")
        self.images = dict(images)
        self.max_in_flight = max_in_flight
        self.max_rate = max_rate
        self.retry_after = retry_after
        self.retry_after_date = retry_after_date
        self.hold_s = hold_s
        self.always_429 = frozenset(always_429)
        self.block_after = block_after
        self.state = _State(transient or {})
        self.httpd = _ThrottleHTTPServer(self, host, port)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.05,), name="zxl-throttle-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def urls(self, n: int | None = None) -> list[str]:
        """The URLs of the first ``n`` images (all by default), in path order."""
        paths = sorted(self.images)
        return [self.url(p) for p in paths[: len(paths) if n is None else n]]

    def write_urls(self, path: str | Path, n: int | None = None, column: str = "url") -> Path:
        """A Parquet URL list (one column, ``column``) of ``urls(n)``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({column: self.urls(n)}), path)
        return path

    def stats(self, settle_s: float = 1.0) -> dict:
        """What the server saw since it started or since ``reset_stats``, once no handler runs (waiting
        ``settle_s`` at most: a client may read a response before its handler has counted it):

        - ``peak_in_flight``: the most admitted requests in flight at once (never above max_in_flight);
        - ``peak_all``: the most requests in flight at once, those answered 429 or 403 included — how
          many the client tried at once; ``peak_all_paths``: the paths in flight when it was first reached;
        - ``requests``, ``served`` (200), ``throttled`` (429), ``blocked`` (403), ``unavailable``
          (503), ``resets`` (closed without a response), ``not_found`` (404);
        - ``throttled_in_flight``, ``throttled_rate``, ``throttled_always``: the 429s by cause;
        - ``early_retries``: requests for a path that came before the Retry-After last given for it
          ran out (a client that does not honour Retry-After);
        - ``per_path`` (requests per path) and ``per_path_ok`` (200s per path);
        - ``span_s``: from the first request's arrival to the last response's end.
        """
        st = self.state
        with st.lock:
            st.idle.wait_for(lambda: not st.running, settle_s)
            return {
                "peak_in_flight": st.peak_admitted,
                "peak_all": st.peak_all,
                "peak_all_paths": list(st.peak_all_paths),
                "requests": st.requests,
                "served": st.codes[200],
                "throttled": st.throttled,
                "throttled_in_flight": st.throttled_by["in_flight"],
                "throttled_rate": st.throttled_by["rate"],
                "throttled_always": st.throttled_by["always"],
                "blocked": st.blocked,
                "unavailable": st.codes[503],
                "resets": st.resets,
                "not_found": st.codes[404],
                "early_retries": st.early,
                "per_path": dict(st.per_path),
                "per_path_ok": dict(st.per_path_ok),
                "span_s": (st.last - st.first) if st.first is not None and st.last is not None else 0.0,
            }

    def reset_stats(self) -> None:
        """Zero the counters and start afresh: transient failures rearmed, the block lifted, the rate
        window and the Retry-After memory emptied (requests in flight stay counted)."""
        with self.state.lock:
            self.state.reset()

    def start(self) -> ThrottleServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> ThrottleServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
