import socket
import time
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from zxl.demo_server import DemoServer


def _get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def test_serves_files_on_loopback(server, corpus, truth):
    assert server.base_url.startswith("http://127.0.0.1:")
    table = server.url_table().to_pandas().merge(truth, on="id")
    row = table[table["variant"] == "clean"].iloc[0]
    status, kind, body = _get(row.file_url)
    assert status == 200 and kind.startswith("image/")
    assert body == (corpus / "files" / pq.read_table(corpus / "source.parquet").to_pandas()
                    .set_index("id").loc[row.id, "file_url"].lstrip("/")).read_bytes()  # fmt: skip


@pytest.mark.parametrize(("kind", "code"), [("not_found", 404), ("server_error", 500)])
def test_error_rows(server, truth, kind, code):
    table = server.url_table().to_pandas().merge(truth, on="id")
    url = table[table["bad"] == kind].iloc[0].file_url
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(url)
    assert e.value.code == code


def test_no_path_escapes_the_corpus(server):
    for path in ("/data/../source.parquet", "/source.parquet", "/data/%2e%2e/special.json"):
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(server.base_url + path)
        assert e.value.code == 404


def test_slow_rows_stall_past_a_timeout(corpus, truth):
    with DemoServer(corpus, port=0, slow_seconds=3.0) as srv:
        table = srv.url_table().to_pandas().merge(truth, on="id")
        url = table[table["bad"] == "slow"].iloc[0].file_url
        t0 = time.monotonic()
        with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
            _get(url, timeout=0.5)
        assert time.monotonic() - t0 < 2.5
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 2.0  # stopping does not wait for stalled handlers


def test_busy_preferred_port_falls_back(corpus):
    with DemoServer(corpus, port=0) as a:
        port = int(a.base_url.rsplit(":", 1)[1])
        with DemoServer(corpus, port=port) as b:
            assert b.base_url != a.base_url


def test_refuses_non_loopback_hosts(corpus):
    with pytest.raises(ValueError, match="loopback"):
        DemoServer(corpus, host="0.0.0.0")
