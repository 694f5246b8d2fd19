"""The SSRF guard: private addresses refused by default, also behind a redirect; allowed when listed."""

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline import netguard


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


@pytest.fixture
def redirecting_server():
    """127.0.0.1 serves an image and a redirect to 127.0.0.2 (another loopback address)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            if self.path == "/hop":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.2:{self.server.server_port}/ok")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b"image bytes"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_port
    srv.shutdown()
    urllib.request.install_opener(None)


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


def test_refused_by_default_allowed_when_listed_and_redirects_checked(redirecting_server):
    port = redirecting_server
    netguard.install([], allow_private=False)
    with pytest.raises(urllib.error.URLError, match=r"refused: 127.0.0.1 is a loopback address .*fetch.allowed_hosts"):
        _get(f"http://127.0.0.1:{port}/ok")
    netguard.install(["127.0.0.1"], allow_private=False)
    assert _get(f"http://127.0.0.1:{port}/ok") == b"image bytes"
    with pytest.raises(urllib.error.URLError, match=r"refused: 127.0.0.2 is a loopback address"):
        _get(f"http://127.0.0.1:{port}/hop")  # allowed host, redirected to one that is not
    netguard.install([], allow_private=True)
    assert _get(f"http://127.0.0.1:{port}/hop") == b"image bytes"


def test_a_curate_run_refuses_private_urls_by_default(urls_file, tmp_path):
    from catalog.build import read_catalog
    from pipeline.curate import curate
    from tests.conftest import make_config

    cfg = make_config(tmp_path, "guarded", urls_file, "fetch.allowed_hosts=[]", "run.shard_size=200")
    cat = read_catalog(curate(cfg, log=lambda *_: None).catalog_dir).to_pandas()
    assert (cat["status"] == "failed_download").all()
    assert cat["error"].str.contains("refused: 127.0.0.1 is a loopback address").all()
