"""The fetch guard: only http(s), only allowed addresses (redirects too), bounded responses, per request."""

import contextlib
import socket
import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from zxl.pipeline import netguard


@pytest.mark.parametrize(
    ("address", "kind"),
    [("127.0.0.1", "loopback"), ("10.1.2.3", "private-network"), ("192.168.0.9", "private-network"),
     ("172.16.5.5", "private-network"), ("169.254.169.254", "cloud metadata"), ("169.254.10.1", "link-local"),
     ("::1", "loopback"), ("fd00:ec2::254", "cloud metadata"), ("::ffff:10.0.0.1", "private-network"),
     ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast")],
)  # fmt: skip
def test_private_addresses(address, kind):
    assert kind in netguard.why_refused(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_addresses(address):
    assert netguard.why_refused(address) is None


class Recorder(ThreadingHTTPServer):
    """A server on one loopback address that records every request it gets."""

    daemon_threads = True

    def __init__(self, host, port, handler):
        self.paths = []
        super().__init__((host, port), handler)


@contextlib.contextmanager
def recording_pair(handler):
    """``handler`` on 127.0.0.1 (allowed in these tests) and on 127.0.0.2 at the same port (refused),
    each recording the paths it is asked for."""
    one = Recorder("127.0.0.1", 0, handler)
    two = Recorder("127.0.0.2", one.server_port, handler)
    for srv in (one, two):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield one, two
    finally:
        for srv in (one, two):
            srv.shutdown()
            srv.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        self.server.paths.append(self.path)
        if self.path.startswith("/to/"):  # /to/<url> redirects there
            self.send_response(302)
            self.send_header("Location", self.path[len("/to/") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/endless":  # no Content-Length, bytes until the client stops reading
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(10_000):
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
            return
        body = b"x" * 5000 if self.path == "/big" else b"image bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def servers():
    with recording_pair(_Handler) as pair:
        yield pair


def _get(guard, url):
    with guard.open(url, timeout=5) as r:
        return r.read()


def test_refused_by_default_allowed_when_listed_and_redirects_checked(servers):
    one, two = servers
    port = one.server_port
    with pytest.raises(urllib.error.URLError, match=r"refused: 127.0.0.1 is a loopback address .*fetch.allowed_hosts"):
        _get(netguard.Guard([], allow_private=False), f"http://127.0.0.1:{port}/ok")
    allowed = netguard.Guard(["127.0.0.1"], allow_private=False)
    assert _get(allowed, f"http://127.0.0.1:{port}/ok") == b"image bytes"
    with pytest.raises(urllib.error.URLError, match=r"refused: 127.0.0.2 is a loopback address"):
        _get(allowed, f"http://127.0.0.1:{port}/to/http://127.0.0.2:{port}/ok")  # allowed host, redirected
    assert two.paths == []  # the refused address was never connected to
    assert _get(netguard.Guard([], allow_private=True), f"http://127.0.0.1:{port}/to/http://127.0.0.2:{port}/ok")
    assert two.paths == ["/ok"]


HOSTILE = [
    "ftp://127.0.0.1:{port}/x.png", "ftp://127.0.0.2:{port}/x.png", "ftp://localhost:{port}/x.png",
    "file:///etc/passwd", "file:///dev/zero", "file://localhost/etc/hostname", "file:/etc/passwd",
    "data:image/png;base64,iVBORw0KGgo=", "gopher://127.0.0.1:{port}/", "//127.0.0.1:{port}/x.png",
    "127.0.0.1:{port}/x.png",
]  # fmt: skip


@pytest.mark.parametrize("url", HOSTILE)
def test_only_http_and_https_are_fetched_first_url_and_redirect(servers, url, monkeypatch):
    one, two = servers
    url = url.format(port=one.server_port)
    connected = []
    create = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda a, *r, **k: connected.append(a) or create(a, *r, **k))
    guard = netguard.Guard(["127.0.0.1", "127.0.0.2"], allow_private=True)
    with pytest.raises(urllib.error.URLError, match=r"refused: (scheme \w+|a URL without a scheme) \(only http"):
        _get(guard, url)
    assert connected == []  # refused before any connection
    if "://" in url and not url.startswith("//"):  # the same target behind an allowed http redirect
        with pytest.raises(urllib.error.URLError, match=r"refused: a redirect to scheme \w+ \(only http and https"):
            _get(guard, f"http://127.0.0.1:{one.server_port}/to/{url}")
        assert len(connected) == 1  # the first hop only
    assert one.paths in ([], [f"/to/{url}"]) and two.paths == []


def test_a_response_over_the_byte_cap_fails_at_the_cap(servers):
    port = servers[0].server_port
    guard = netguard.Guard(["127.0.0.1"], allow_private=False, max_bytes=4096)
    with pytest.raises(
        netguard.ResponseTooLargeError, match=r"announces 5000 bytes, over fetch.max_response_bytes=4096"
    ):
        _get(guard, f"http://127.0.0.1:{port}/big")
    with pytest.raises(netguard.ResponseTooLargeError, match=r"sent more than 4096 bytes"):
        _get(guard, f"http://127.0.0.1:{port}/endless")
    assert _get(guard, f"http://127.0.0.1:{port}/ok") == b"image bytes"


def test_policies_are_per_request_across_threads(servers):
    """Two policies used at once from many threads: neither ever sees the other's (the old global swap did)."""
    one, _ = servers
    url = f"http://127.0.0.1:{one.server_port}/ok"
    open_, closed = netguard.Guard(["127.0.0.1"], False), netguard.Guard([], False)
    results = {"open": [], "closed": []}

    def work(name, guard):
        for _ in range(20):
            try:
                results[name].append(_get(guard, url))
            except urllib.error.URLError as e:
                results[name].append(str(e))

    threads = [threading.Thread(target=work, args=(n, g)) for n, g in [("open", open_), ("closed", closed)] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["open"] == [b"image bytes"] * 80
    assert len(results["closed"]) == 80 and all("refused: 127.0.0.1 is a loopback" in r for r in results["closed"])


def test_img2dataset_fetches_only_through_the_guard_its_timeout_carries(servers):
    import img2dataset.downloader as d

    netguard.patch_img2dataset()
    netguard.patch_img2dataset()  # idempotent
    url = f"http://127.0.0.1:{servers[0].server_port}/ok"
    _, stream, err = d.download_image((0, url), 5, None, None)  # a plain timeout carries no policy
    assert stream is None and "refused: a request without a zxl fetch policy" in err
    _, stream, err = d.download_image((0, url), netguard.Guard([], False).timeout(5), None, None)
    assert stream is None and "refused: 127.0.0.1 is a loopback address" in err
    _, stream, err = d.download_image((0, url), netguard.Guard(["127.0.0.1"], False).timeout(5), None, None)
    assert err is None and stream.read() == b"image bytes"
    _, stream, err = d.download_image((0, "file:///etc/passwd"), netguard.Guard([], True).timeout(5), None, None)
    assert stream is None and "refused: scheme file" in err


def test_connect_to_sends_the_connection_elsewhere_and_is_checked_there(servers):
    one, two = servers
    port = one.server_port
    moved = netguard.Guard(["127.0.0.1"], False, connect_to={("127.0.0.1", 1): ("127.0.0.1", port)})
    assert _get(moved, "http://127.0.0.1:1/ok") == b"image bytes"  # the URL names port 1
    sneaky = netguard.Guard(["127.0.0.1"], False, connect_to={("127.0.0.1", 1): ("127.0.0.2", port)})
    with pytest.raises(urllib.error.URLError, match="refused: 127.0.0.2 is a loopback address"):
        _get(sneaky, "http://127.0.0.1:1/ok")
    assert two.paths == []


def test_a_curate_run_refuses_private_urls_by_default(urls_file, tmp_path):
    from tests.conftest import make_config
    from zxl.catalog.schema import read_catalog
    from zxl.pipeline.curate import curate

    cfg = make_config(tmp_path, "guarded", urls_file, "fetch.allowed_hosts=[]", "run.shard_size=200")
    cat = read_catalog(curate(cfg, log=lambda *_: None).catalog_dir).to_pandas()
    assert (cat["status"] == "failed_download").all()
    assert cat["error"].str.contains("refused: 127.0.0.1 is a loopback address").all()
