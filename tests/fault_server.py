"""A fault-injection HTTP server on 127.0.0.1: one path per way a scraped URL can go wrong.

``FaultServer`` is a real ``ThreadingHTTPServer`` in a background thread (like zxl's demo
server), started and stopped with a ``with`` block. ``FAULTS`` names every path and what it
does; the bodies are generated once, deterministically, when the server starts, and
``server.bodies[path]`` gives the bytes a path serves so a test can compare the stored image with
what was sent. Every handler that waits does so on ``stop`` (an Event set on shutdown), so
stopping never waits for a stalled or dripping handler.

The timings are parameters: ``stall_s`` (how long /timeout keeps quiet; longer than the fetch
timeout under test), ``drip_pause_s`` (the pause between the pieces of /drip-ok.png, shorter
than the fetch timeout) and ``drip_forever_s`` (how long /drip-forever keeps dribbling at most:
longer than the whole-response deadline under test).
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

from zxl.demo_corpus import bomb_png

# path -> what it does (the test module holds what zxl must make of each)
FAULTS = {
    "/ok.jpg": "a plain RGB JPEG (the control)",
    "/http-403": "403 Forbidden",
    "/http-404": "404 Not Found",
    "/http-500": "500 Internal Server Error",
    "/timeout": "no answer at all for stall_s, then the connection closes",
    "/drip-ok.png": "a PNG in 6 pieces, drip_pause_s apart: slow, but each read and the whole inside the limits",
    "/drip-forever": "headers promising 10 MB, then one byte every 0.2 s for up to drip_forever_s",
    "/truncated.jpg": "Content-Length of the whole JPEG, half of it sent, then the connection closes",
    "/short-length.jpg": "Content-Length of half the JPEG, the whole JPEG sent, then the connection closes",
    "/html": "an HTML page with status 200 and Content-Type image/jpeg",
    "/empty": "status 200, Content-Type image/png, zero bytes",
    "/redirect-loop": "302 to itself, forever",
    "/redirect-metadata": "302 to http://169.254.169.254/latest/meta-data/ (a cloud metadata service)",
    "/redirect-private": "302 to http://10.0.0.1/ (a private network)",
    "/bomb.png": "a small PNG whose header claims 30000x30000 pixels",
    "/huge.gif": "a 1x1 GIF frame on a 30000x30000 logical screen",
    "/cmyk.jpg": "a CMYK JPEG",
    "/gray16.png": "a 16-bit greyscale PNG (Pillow mode I;16)",
    "/rgb16.png": "a 16-bit-per-channel RGB PNG",
    "/animated.gif": "a 3-frame animated GIF",
    "/animated.webp": "a 3-frame animated WebP",
    "/exif-rotated.jpg": "a 96x64 JPEG with EXIF orientation 6 (upright it is 64x96)",
    "/tiny.png": "a 1x1 PNG",
    "/drawing.svg": "an SVG drawing served as image/svg+xml",
}
FRAMES = 3  # frames of the animated images


def smooth(width: int, height: int, seed: int) -> Image.Image:
    """A smooth RGB picture, different for every seed (so no two are near-duplicates of each other)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    freq, phase = rng.uniform(0.5, 6, (3, 2)), rng.uniform(0, 6, 3)
    channels = [127 + 120 * np.sin(freq[c, 0] * x * 6 + freq[c, 1] * y * 6 + phase[c]) for c in range(3)]
    # a bright block in a corner that differs per seed makes the orientation and the picture unambiguous
    arr = np.stack(channels, -1)
    arr[: height // 4, : width // 4] = rng.uniform(200, 255, 3)
    return Image.fromarray(arr.astype(np.uint8))


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def huge_gif(side: int = 30_000) -> bytes:
    """A valid 1x1 GIF whose logical screen says side x side."""
    data = bytearray(_encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", side, side)
    return bytes(data)


def png16_rgb(width: int, height: int, seed: int) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow does not write them)."""
    rgb = np.asarray(smooth(width, height, seed)).astype(">u2") * 257
    raw = b"".join(b"\x00" + row.tobytes() for row in rgb)  # filter type 0 on every scanline

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def build_bodies() -> dict[str, bytes]:
    """Every image body, generated once (each from its own seed)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    frames = {ext: [smooth(96, 64, seed) for seed in range(s, s + FRAMES)] for ext, s in (("gif", 40), ("webp", 50))}
    grey16 = (np.linspace(0, 65535, 96)[None, :] * np.linspace(0.2, 1.0, 64)[:, None]).astype(np.uint16)
    return {
        "/ok.jpg": _encode(smooth(96, 64, 1), "JPEG", quality=95),
        "/drip-ok.png": _encode(smooth(96, 64, 2), "PNG"),
        "/truncated.jpg": _encode(smooth(96, 64, 3), "JPEG", quality=95),
        "/short-length.jpg": _encode(smooth(96, 64, 4), "JPEG", quality=95),
        "/html": b"<!DOCTYPE html><html><head><title>Access denied</title></head><body>blocked</body></html>",
        "/empty": b"",
        "/bomb.png": bomb_png(30_000),
        "/huge.gif": huge_gif(30_000),
        "/cmyk.jpg": _encode(smooth(96, 64, 5).convert("CMYK"), "JPEG", quality=95),
        "/gray16.png": _encode(Image.fromarray(grey16), "PNG"),
        "/rgb16.png": png16_rgb(96, 64, 6),
        "/animated.gif": _encode(frames["gif"][0], "GIF", save_all=True, append_images=frames["gif"][1:],
                                 duration=100, loop=0),
        "/animated.webp": _encode(frames["webp"][0], "WEBP", save_all=True, append_images=frames["webp"][1:],
                                  duration=100, loop=0, lossless=True),
        "/exif-rotated.jpg": _encode(smooth(96, 64, 7), "JPEG", quality=95, exif=exif),
        "/tiny.png": _encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        "/drawing.svg": b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
        b'width="64" height="64"><circle cx="32" cy="32" r="30" fill="red"/></svg>',
    }  # fmt: skip


_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".gif": "image/gif", ".webp": "image/webp",
          ".svg": "image/svg+xml", "/html": "image/jpeg", "/empty": "image/png"}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    server: FaultHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        srv = self.server
        srv.hits[path] = srv.hits.get(path, 0) + 1
        self.close_connection = True
        try:
            if path.startswith("/http-"):
                code = int(path.removeprefix("/http-"))
                return self._reply(code, f"error {code}".encode(), "text/plain")
            if path == "/timeout":
                srv.stop.wait(srv.stall_s)  # say nothing, then hang up
                return
            if path == "/drip-forever":
                self._head(200, "image/jpeg", 10_000_000)
                for _ in range(int(srv.drip_forever_s / 0.2)):
                    if srv.stop.wait(0.2):
                        return
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                return
            if path == "/drip-ok.png":
                body = srv.bodies[path]
                self._head(200, "image/png", len(body))
                step = -(-len(body) // 6)
                for i in range(0, len(body), step):
                    if i and srv.stop.wait(srv.drip_pause_s):
                        return
                    self.wfile.write(body[i : i + step])
                    self.wfile.flush()
                return
            if path == "/truncated.jpg":
                body = srv.bodies[path]
                self._head(200, "image/jpeg", len(body))
                self.wfile.write(body[: len(body) // 2])
                return
            if path == "/short-length.jpg":
                body = srv.bodies[path]
                self._head(200, "image/jpeg", len(body) // 2)
                self.wfile.write(body)
                return
            if path.startswith("/redirect-"):
                target = {
                    "/redirect-loop": f"{srv.base_url}/redirect-loop",
                    "/redirect-metadata": "http://169.254.169.254/latest/meta-data/",
                    "/redirect-private": "http://10.0.0.1/",
                }.get(path)
                if target:
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            if path in srv.bodies:
                kind = next(v for k, v in _TYPES.items() if path.endswith(k))
                return self._reply(200, srv.bodies[path], kind)
            self._reply(404, b"no such fault", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first, as it should

    def _head(self, code: int, kind: str, length: int):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()

    def _reply(self, code: int, body: bytes, kind: str):
        self._head(code, kind, len(body))
        self.wfile.write(body)


class FaultHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default listen backlog is 5: with every fault fetched at once the rest of
    # the connections would wait for a SYN retransmit (1 s) and time out at fetch.timeout=1.
    request_queue_size = 128

    def __init__(self, stall_s: float, drip_pause_s: float, drip_forever_s: float):
        self.stall_s, self.drip_pause_s, self.drip_forever_s = stall_s, drip_pause_s, drip_forever_s
        self.bodies = build_bodies()
        self.stop = threading.Event()
        self.hits: dict[str, int] = {}
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FaultServer:
    """``with FaultServer() as srv: srv.url("/http-404")`` — on 127.0.0.1, a free port."""

    def __init__(self, stall_s: float = 2.0, drip_pause_s: float = 0.2, drip_forever_s: float = 15.0):
        self.httpd = FaultHTTPServer(stall_s, drip_pause_s, drip_forever_s)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="zxl-fault-server", daemon=True)

    @property
    def base_url(self) -> str:
        return self.httpd.base_url

    @property
    def bodies(self) -> dict[str, bytes]:
        return self.httpd.bodies

    @property
    def hits(self) -> dict[str, int]:
        return self.httpd.hits

    def url(self, path: str) -> str:
        return self.base_url + path

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
