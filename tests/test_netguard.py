"""The fetch guard: only http(s), only allowed addresses (redirects too), no credentials, bounded responses,
per request."""

import contextlib
import gc
import re
import socket
import threading
import time
import urllib.error
import urllib.request
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
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), handler)


@contextlib.contextmanager
def serving(*servers):
    """The servers answering from threads of their own until the block ends."""
    for srv in servers:
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield servers
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


@contextlib.contextmanager
def recording_pair(handler):
    """``handler`` on 127.0.0.1 (allowed in these tests) and on 127.0.0.2 at the same port (refused),
    each recording the paths it is asked for."""
    one = Recorder("127.0.0.1", 0, handler)
    with serving(one, Recorder("127.0.0.2", one.server_port, handler)) as pair:
        yield pair


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


@pytest.fixture
def server6():
    """``_Handler`` on [::1] (skipped where this machine has no IPv6 loopback)."""
    try:
        srv = Recorder("::1", 0, _Handler)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    with serving(srv):
        yield srv


def forbid_lookups(monkeypatch) -> list:
    """Fails the test on any name lookup or connection from now on; returns what was attempted."""
    tried = []

    def lookup(host, *a, **k):
        tried.append(("getaddrinfo", host))
        pytest.fail(f"looked up {host!r}")

    def connect(address, *a, **k):
        tried.append(("create_connection", address))
        pytest.fail(f"connected to {address!r}")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(socket, "create_connection", connect)
    return tried


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


CREDENTIALS = re.escape(netguard.CREDENTIALS)
REDIRECT_CREDENTIALS = re.escape(netguard.REDIRECT_CREDENTIALS)
WITH_CREDENTIALS = [
    "http://alice:s3cret@127.0.0.1:{port}/ok", "http://alice@127.0.0.1:{port}/ok", "http://:s3cret@127.0.0.1:{port}/ok",
    "http://alice:@127.0.0.1:{port}/ok", "http://@127.0.0.1:{port}/ok", "https://alice:s3cret@127.0.0.1:{port}/ok",
    "http://alice:s3cret@127.0.0.1/ok", "http://alice:s3cret@localhost:{port}/ok", "HTTP://alice:s3cret@LOCALHOST/ok",
    "http://alice:s3cret@[::1]:{port}/ok", "http://a@b:s3cret@127.0.0.1:{port}/ok",
    "http://alice%3As3cret%40127.0.0.1:{port}/ok", "http://alice:s3cret%40127.0.0.1:{port}/ok",
    "http://alice:s3cret@no-such-host.invalid/ok",  # refused before it could be looked up
]  # fmt: skip


@pytest.mark.parametrize("url", WITH_CREDENTIALS)
def test_credentials_in_the_url_are_refused_before_any_lookup_or_connection(servers, url, monkeypatch):
    one, two = servers
    url = url.format(port=one.server_port)
    guards = [  # every host of the URLs allowed, and everything
        netguard.Guard(["127.0.0.1", "localhost", "::1"], allow_private=False),
        netguard.Guard([], allow_private=True),
    ]
    tried = forbid_lookups(monkeypatch)  # after the Guards: they look up their allowed hosts
    for guard in guards:
        with pytest.raises(urllib.error.URLError, match=rf"^<urlopen error {CREDENTIALS}>$") as e:
            _get(guard, url)
        assert "alice" not in str(e.value) and "s3cret" not in str(e.value)  # never repeated
        with pytest.raises(urllib.error.URLError, match=CREDENTIALS):  # a Request, as img2dataset passes it
            _get(guard, urllib.request.Request(url))
    assert tried == [] and one.paths == [] and two.paths == []


def test_credentials_are_refused_even_for_an_allowed_host(servers, monkeypatch):
    one, _ = servers
    guard = netguard.Guard(["127.0.0.1", "localhost"], allow_private=False)
    assert _get(guard, f"http://127.0.0.1:{one.server_port}/ok") == b"image bytes"  # allowed without them
    tried = forbid_lookups(monkeypatch)
    for url in (f"http://alice:s3cret@127.0.0.1:{one.server_port}/ok", f"http://alice@localhost:{one.server_port}/ok"):
        with pytest.raises(urllib.error.URLError, match=CREDENTIALS):
            _get(guard, url)
    assert tried == [] and one.paths == ["/ok"]


@pytest.mark.parametrize("url", [*WITH_CREDENTIALS, "//alice:s3cret@127.0.0.1:{port}/ok"])
def test_a_redirect_to_a_url_with_credentials_is_refused(servers, url, monkeypatch):
    one, two = servers
    port = one.server_port
    url = url.format(port=port)
    tried = []
    lookup, create = socket.getaddrinfo, socket.create_connection

    def only_the_first_hop(host, *a, **k):  # never a real lookup of any other name, even if this regresses
        tried.append(host)
        return lookup(host, *a, **k) if host == "127.0.0.1" else pytest.fail(f"looked up {host!r}")

    monkeypatch.setattr(socket, "getaddrinfo", only_the_first_hop)
    monkeypatch.setattr(socket, "create_connection", lambda a, *r, **k: tried.append(a) or create(a, *r, **k))
    guard = netguard.Guard(["127.0.0.1"], allow_private=False)
    tried.clear()
    with pytest.raises(urllib.error.URLError, match=REDIRECT_CREDENTIALS) as e:
        _get(guard, f"http://127.0.0.1:{port}/to/{url}")
    assert "s3cret" not in str(e.value)
    assert tried == ["127.0.0.1", ("127.0.0.1", port), "127.0.0.1"]  # the first hop only (create_connection looks up)
    assert one.paths == [f"/to/{url}"] and two.paths == []


@pytest.mark.parametrize(
    "path", ["/a@b.png", "/ok?from=a@b", "/ok?u=http://alice:s3cret@127.0.0.2/", "/x/@/y.png", "/ok#a@b", "/%40/ok"]
)
def test_an_at_sign_in_the_path_query_or_fragment_is_not_userinfo(servers, path):
    one, two = servers
    port = one.server_port
    guard = netguard.Guard(["127.0.0.1"], allow_private=False)
    assert _get(guard, f"http://127.0.0.1:{port}{path}") == b"image bytes"
    assert _get(guard, f"http://127.0.0.1:{port}/to/http://127.0.0.1:{port}{path}") == b"image bytes"  # redirected
    sent = path.split("#")[0]
    assert one.paths == [sent, f"/to/http://127.0.0.1:{port}{sent}", sent] and two.paths == []


def test_ipv6_literals_with_a_port(server6, servers):
    port, two = server6.server_port, servers[1]
    with pytest.raises(urllib.error.URLError, match=r"refused: ::1 is a loopback address"):
        _get(netguard.Guard([], allow_private=False), f"http://[::1]:{port}/ok")
    for allowed in ("::1", "[::1]", "0:0:0:0:0:0:0:1"):  # fetch.allowed_hosts in any spelling
        assert _get(netguard.Guard([allowed], False), f"http://[::1]:{port}/ok") == b"image bytes"
    guard = netguard.Guard(["::1"], allow_private=False)
    assert _get(guard, f"http://[0:0::1]:{port}/a@b.png") == b"image bytes"
    with pytest.raises(urllib.error.URLError, match=CREDENTIALS):
        _get(guard, f"http://alice:s3cret@[::1]:{port}/ok")
    with pytest.raises(urllib.error.URLError, match=r"refused: 127.0.0.2 is a loopback address"):
        _get(guard, f"http://[::1]:{port}/to/http://127.0.0.2:{two.server_port}/ok")  # v6 to refused v4
    moved = netguard.Guard(["::1"], False, connect_to={("[0::1]", 1): ("[::1]", port)})
    assert _get(moved, "http://[::1]:1/ok") == b"image bytes"  # the URL names port 1
    assert server6.paths == [*["/ok"] * 3, "/a@b.png", f"/to/http://127.0.0.2:{two.server_port}/ok", "/ok"]
    assert two.paths == []


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


def test_img2dataset_fetches_only_through_the_guard_its_timeout_carries(servers, monkeypatch):
    import importlib

    import img2dataset.downloader as d

    if getattr(d.download_image, "zxl_polite", False):  # an earlier fetch in this process put polite's in
        monkeypatch.setattr(d, "download_image", importlib.reload(d).download_image)  # img2dataset's own
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
    with_credentials = url.replace("http://", "http://alice:s3cret@")
    _, stream, err = d.download_image((0, with_credentials), netguard.Guard(["127.0.0.1"], True).timeout(5), None, None)
    assert stream is None and err == f"<urlopen error {netguard.CREDENTIALS}>"
    assert servers[0].paths == ["/ok"]  # the allowed fetch only


def test_connect_to_sends_the_connection_elsewhere_and_is_checked_there(servers):
    one, two = servers
    port = one.server_port
    moved = netguard.Guard(["127.0.0.1"], False, connect_to={("127.0.0.1", 1): ("127.0.0.1", port)})
    assert _get(moved, "http://127.0.0.1:1/ok") == b"image bytes"  # the URL names port 1
    sneaky = netguard.Guard(["127.0.0.1"], False, connect_to={("127.0.0.1", 1): ("127.0.0.2", port)})
    with pytest.raises(urllib.error.URLError, match="refused: 127.0.0.2 is a loopback address"):
        _get(sneaky, "http://127.0.0.1:1/ok")
    named = netguard.Guard(["127.0.0.1"], False, connect_to={("LocalHost", 1): ("127.0.0.1", port)})
    assert _get(named, "http://localhost:1/ok") == b"image bytes"  # the URL's host, in any case
    with pytest.raises(urllib.error.URLError, match=CREDENTIALS):  # its host:port is mapped, its credentials not sent
        _get(named, "http://alice:s3cret@localhost:1/ok")
    assert one.paths == ["/ok", "/ok"] and two.paths == []


def test_a_curate_run_refuses_private_urls_by_default(urls_file, tmp_path):
    from tests.conftest import make_config
    from zxl.catalog.schema import read_catalog
    from zxl.pipeline.curate import curate

    cfg = make_config(tmp_path, "guarded", urls_file, "fetch.allowed_hosts=[]", "run.shard_size=200")
    cat = read_catalog(curate(cfg, log=lambda *_: None).catalog_dir).to_pandas()
    assert (cat["status"] == "failed_download").all()
    assert cat["error"].str.contains("refused: 127.0.0.1 is a loopback address").all()


class _KeepAliveServer(Recorder):
    """A Recorder that speaks HTTP/1.1 and also records the client port of each request, and counts
    the connections it has closed."""

    def __init__(self, handler):
        self.ports = []
        self.drop = set()
        self.closed = threading.Semaphore(0)
        super().__init__("127.0.0.1", 0, handler)

    def shutdown_request(self, request):
        super().shutdown_request(request)
        self.closed.release()


class _KeepAlive(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        self.server.paths.append(self.path)
        self.server.ports.append(self.client_address[1])
        if self.client_address[1] in self.server.drop:  # read the request, then hang up without a byte
            self.close_connection = True
            return
        if self.path == "/early-hints":  # a 103, then (later) the final answer
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n")
            time.sleep(0.2)
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nthe hints")
            return
        if self.path == "/then-drop":  # the next request on this connection is dropped
            self.server.drop.add(self.client_address[1])
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"image ", b"bytes", b""):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            return
        code, body = (
            (404, b"not found")
            if self.path == "/missing"
            else (200, b"x" * 5000 if self.path == "/big" else b"image bytes")
        )
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/last":  # the server ends the connection after this response
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        if self.path == "/hang-up":  # … or ends it without saying so: the client sees it when idle
            self.close_connection = True


@pytest.fixture
def keep_alive():
    with serving(_KeepAliveServer(_KeepAlive)) as (srv,):
        yield srv


def test_one_connection_serves_a_hosts_requests_one_after_another(keep_alive):
    url = f"http://127.0.0.1:{keep_alive.server_port}"
    with netguard.Guard(["127.0.0.1"], False, max_bytes=6000) as guard:
        got = [
            _get(guard, f"{url}/ok"),
            _get(guard, f"{url}/big"),
            _get(guard, f"{url}/big"),
            _get(guard, f"{url}/chunked"),
        ]
    assert got == [b"image bytes", b"x" * 5000, b"x" * 5000, b"image bytes"]  # each request its own byte budget
    assert len(set(keep_alive.ports)) == 1
    assert keep_alive.closed.acquire(timeout=5)  # Guard.close closed it


def test_a_connection_is_reused_only_after_its_response_was_read_to_the_end(keep_alive):
    url = f"http://127.0.0.1:{keep_alive.server_port}"
    guard = netguard.Guard(["127.0.0.1"], False)
    with guard.open(f"{url}/big", timeout=5) as r:
        assert r.read(10) == b"x" * 10  # closed with 4990 bytes unread
    with pytest.raises(urllib.error.HTTPError, match="404"):
        _get(guard, f"{url}/missing")  # an error response, its body unread
    assert _get(guard, f"{url}/ok") == b"image bytes"
    assert _get(guard, f"{url}/ok") == b"image bytes"
    guard.close()
    first, second, third, fourth = keep_alive.ports
    assert len({first, second, third}) == 3 and fourth == third


def test_a_connection_the_server_ends_is_not_reused(keep_alive):
    url = f"http://127.0.0.1:{keep_alive.server_port}"
    guard = netguard.Guard(["127.0.0.1"], False)
    assert _get(guard, f"{url}/last") == b"image bytes"  # Connection: close
    assert _get(guard, f"{url}/hang-up") == b"image bytes"  # closed without a word, after the response
    assert keep_alive.closed.acquire(timeout=5) and keep_alive.closed.acquire(timeout=5)
    assert _get(guard, f"{url}/ok") == b"image bytes"  # not on the hung-up connection: no error
    guard.close()
    assert len(set(keep_alive.ports)) == 3


def test_kept_alive_connections_are_per_guard_and_per_host(keep_alive, servers):
    """A connection opened under one policy never carries another policy's request, and none
    outlives the check of the host it was opened for."""
    url = f"http://127.0.0.1:{keep_alive.server_port}/ok"
    open_, closed = netguard.Guard(["127.0.0.1"], False), netguard.Guard([], False)
    assert _get(open_, url) == b"image bytes"
    with pytest.raises(urllib.error.URLError, match="refused: 127.0.0.1 is a loopback"):
        _get(closed, url)
    moved = netguard.Guard(["127.0.0.1"], False, connect_to={("localhost", 1): ("127.0.0.2", keep_alive.server_port)})
    with pytest.raises(urllib.error.URLError, match="refused: 127.0.0.2 is a loopback"):
        _get(moved, "http://localhost:1/ok")  # another host: its own connection, its own check
    assert _get(open_, url) == b"image bytes"
    assert len(set(keep_alive.ports)) == 1 and keep_alive.paths == ["/ok", "/ok"]
    for guard in (open_, closed, moved):
        guard.close()


def test_a_request_the_server_drops_on_a_kept_alive_connection_goes_again_on_a_new_one(keep_alive):
    """HTTP/1.1 lets a server close an idle connection as the next request arrives: no answer at all
    on a reused connection is the connection's end, not the request's; the request goes once more."""
    url = f"http://127.0.0.1:{keep_alive.server_port}"
    with netguard.Guard(["127.0.0.1"], False) as guard:
        assert _get(guard, f"{url}/then-drop") == b"image bytes"
        assert _get(guard, f"{url}/ok") == b"image bytes"
    assert keep_alive.paths == ["/then-drop", "/ok", "/ok"]
    first, dropped, again = keep_alive.ports
    assert dropped == first and again != first


def test_idle_connections_are_bounded_in_number_and_age(keep_alive):
    url = f"http://127.0.0.1:{keep_alive.server_port}"
    guard = netguard.Guard(["127.0.0.1"], False, max_idle=2, idle_seconds=0.3)
    held = [guard.open(f"{url}/ok", timeout=5) for _ in range(3)]  # three at once: three connections
    for r in held:
        assert r.read() == b"image bytes"
        r.close()
    assert keep_alive.closed.acquire(timeout=5)  # the third idle one pushed the oldest out
    assert not keep_alive.closed.acquire(timeout=0.2)
    assert _get(guard, f"{url}/ok") == b"image bytes"  # on the newest
    assert keep_alive.ports[3] == keep_alive.ports[2]
    time.sleep(0.4)  # past idle_seconds: not reused, closed
    assert _get(guard, f"{url}/ok") == b"image bytes"
    assert keep_alive.ports[4] not in keep_alive.ports[:4]
    guard.close()


def test_a_response_dropped_unread_closes_its_connection_without_the_garbage_collector(keep_alive):
    guard = netguard.Guard(["127.0.0.1"], False)
    gc.disable()
    try:
        r = guard.open(f"http://127.0.0.1:{keep_alive.server_port}/big", timeout=5)
        assert r.read(10) == b"x" * 10
        del r
        assert keep_alive.closed.acquire(timeout=5)
    finally:
        gc.enable()
        guard.close()


def test_an_informational_response_never_hands_its_connection_on(keep_alive):
    """A 103 is not the answer: the final one follows on the same connection, so that connection
    must not carry the next request (it would read the 103's successor as its own answer)."""
    url = f"http://127.0.0.1:{keep_alive.server_port}"
    with netguard.Guard(["127.0.0.1"], False) as guard:
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(guard, f"{url}/early-hints")
        assert e.value.code == 103 and e.value.read() == b""  # read to its (empty) end
        e.value.close()
        assert _get(guard, f"{url}/ok") == b"image bytes"
