"""A hostile URL list and a booru export as they come, curated end to end on a LocalCluster whose
worker runs two shards at once (``run.threads_per_worker=2``): every scheme but http(s), redirects
to them and to a refused address, credentials in the URL (and an ``@`` in a path, which is not one),
slow rows that make the shards overlap, timestamp, date, decimal and binary columns, and repeated
ids. Every URL must come out as one row with the right status and its own image, and nothing that
must be refused may reach a server (127.0.0.2 records every request it gets, and must get none;
127.0.0.1 none with credentials)."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import time
from http.server import BaseHTTPRequestHandler

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import make_config
from tests.fault_server import smooth
from tests.test_netguard import recording_pair
from zxl.catalog.schema import read_catalog, read_manifest
from zxl.pipeline import netguard
from zxl.pipeline.curate import curate
from zxl.tars import read_images as read_tar_images

N_GOOD = 12


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    smooth(64, 48, 100 + i).save(buf, "PNG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        self.server.paths.append(self.path)
        if self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to/") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/slow/"):
            time.sleep(0.4)  # keeps this shard busy while the other one runs
        name = self.path.rsplit("/", 1)[-1]
        if not name.endswith(".png") or not name[:-4].isdigit():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = _png(int(name[:-4]))
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def servers():
    with recording_pair(_Handler) as pair:  # 127.0.0.1 (allowed) and 127.0.0.2 (refused)
        yield pair


def hostile_urls(port: int) -> dict[str, str]:
    """url -> the start of the error it must give (all failed_download)."""
    a, b = f"127.0.0.1:{port}", f"127.0.0.2:{port}"
    direct = {
        f"ftp://{a}/1.png": "refused: scheme ftp",
        f"ftp://{b}/1.png": "refused: scheme ftp",
        f"ftp://localhost:{port}/1.png": "refused: scheme ftp",
        "file:///etc/passwd": "refused: scheme file",
        "file:///dev/zero": "refused: scheme file",
        "file://localhost/etc/hostname": "refused: scheme file",
        "data:image/png;base64,iVBORw0KGgo=": "refused: scheme data",
        f"gopher://{a}/": "refused: scheme gopher",
        f"http://{b}/2.png": "refused: 127.0.0.2 is a loopback address",
        "": "refused: not an http or https URL",
        f"http://alice:s3cret@{a}/cred/5.png": netguard.CREDENTIALS,  # an allowed host: refused all the same
        f"http://alice@{b}/cred/6.png": netguard.CREDENTIALS,
    }
    redirected = {
        f"http://{a}/to/ftp://{b}/3.png": "refused: a redirect to scheme ftp",
        f"http://{a}/to/file:///etc/passwd": "refused: a redirect to scheme file",
        f"http://{a}/to/file:///dev/zero": "refused: a redirect to scheme file",
        f"http://{a}/to/data:,x": "refused: a redirect to scheme data",
        f"http://{a}/to/http://{b}/4.png": "refused: 127.0.0.2 is a loopback address",
        f"http://{a}/to/http://alice:s3cret@{a}/cred/7.png": netguard.REDIRECT_CREDENTIALS,
    }
    return {**direct, **redirected}


def booru_list(path, port: int):
    """Good rows (some slow) with booru metadata, the hostile URLs between them, repeated ids."""
    hostile = list(hostile_urls(port))
    urls, ids = [], []
    for i in range(N_GOOD):
        kind = "slow" if i % 4 == 0 else "a@b" if i == 2 else "img"  # an @ in the path is no userinfo
        urls.append(f"http://127.0.0.1:{port}/{kind}/{i}.png")
        if i < len(hostile):
            urls.append(hostile[i])
    urls.extend(hostile[N_GOOD:])
    ids = list(range(1000, 1000 + len(urls)))
    ids[1], ids[3], ids[5] = 1000, "1000#2", 1000  # 1000, "1000#2", 1000: the third needs another key
    n = len(urls)
    tokyo = dt.timezone(dt.timedelta(hours=9))
    created = [dt.datetime(2020, 12, 31, 16, 30, tzinfo=dt.UTC) + dt.timedelta(days=i) for i in range(n)]
    table = pa.table(
        {
            "id": pa.array([str(i) for i in ids]),
            "file_url": urls,
            "created_at": pa.array(created, pa.timestamp("us", tz="+09:00")),  # 2021-01-01 01:30 in Tokyo
            "updated_at": pa.array([c.astimezone(tokyo).replace(tzinfo=None) for c in created], pa.timestamp("s")),
            "approved": pa.array([c.date() for c in created], pa.date32()),
            "score_value": pa.array([decimal.Decimal(f"{i}.25") for i in range(n)], pa.decimal128(6, 2)),
            "md5_raw": pa.array([bytes([i]) * 16 for i in range(n)], pa.binary(16)),
            "tag_string_general": ["1girl solo"] * n,
            "rating": ["g"] * n,
        }
    )
    pq.write_table(table, path)
    return table


@pytest.fixture(scope="module")
def hostile_run(servers, tmp_path_factory):
    one, two = servers
    tmp = tmp_path_factory.mktemp("hostile")
    table = booru_list(tmp / "posts.parquet", one.server_port)
    cfg = make_config(
        tmp, "hostile", tmp / "posts.parquet", "run.scheduler=local", "run.workers=1", "run.threads_per_worker=2",
        "run.shard_size=6", "fetch.thread_count=4", "fetch.timeout=3",
    )  # fmt: skip
    result = curate(cfg, log=lambda *_: None)
    cat = read_catalog(result.catalog_dir).to_pandas()
    return result, cat, table


def test_every_url_is_one_row_with_the_right_status_and_nothing_refused_is_fetched(hostile_run, servers):
    result, cat, table = hostile_run
    one, two = servers
    assert len(cat) == table.num_rows and cat["key"].is_unique
    assert cat["url"].tolist() == table["file_url"].to_pylist()  # every row keeps its own URL, in order
    expected = hostile_urls(one.server_port)
    for url, start in expected.items():
        row = cat[cat["url"] == url].iloc[0]
        assert row["status"] == "failed_download" and row["error"].startswith(start), (url, row["error"])
        if "alice" in url:
            assert row["error"] == start and "s3cret" not in row["error"], row["error"]
    good = cat[~cat["url"].isin(expected)]
    assert len(good) == N_GOOD and (good["status"] == "ok").all(), good[["url", "status", "error"]]
    assert two.paths == []  # 127.0.0.2 never got a request, from any thread or shard
    assert not [p for p in one.paths if p.startswith("/cred/")]  # nor 127.0.0.1 one with credentials
    assert cat[cat["url"].str.contains("/a@b/", regex=False)]["status"].tolist() == ["ok"]
    assert result.executor == "LocalCluster with 1 workers"


def test_each_row_holds_its_own_image(hostile_run):
    result, cat, _ = hostile_run
    for _, row in cat[cat["status"] == "ok"].iterrows():
        stored = read_tar_images(result.run_dir / "shards" / row["shard"])[row["shard_key"]]
        i = int(row["url"].rsplit("/", 1)[-1][:-4])
        got = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"), np.float64)
        own = np.abs(got - np.asarray(smooth(64, 48, 100 + i), np.float64)).mean()
        other = np.abs(got - np.asarray(smooth(64, 48, 100 + (i + 1) % N_GOOD), np.float64)).mean()
        assert own < 15 < 4 * 15 < other, (row["key"], own, other)  # JPEG of a small picture: ~9


def test_repeated_ids_get_distinct_stable_keys_counted_in_the_manifest(hostile_run):
    result, cat, table = hostile_run
    ids = table["id"].to_pylist()
    keys = cat["key"].tolist()
    assert (ids[1], ids[3], ids[5]) == ("1000", "1000#2", "1000")
    assert (keys[0], keys[1], keys[3], keys[5]) == ("1000", "1000#3", "1000#2", "1000#4")
    assert cat["source_id"].tolist() == ids  # the source's own id is kept as it was
    manifest = read_manifest(result.catalog_dir)
    assert manifest["source"]["repeated_ids"] == 2 and manifest["source"]["id_column"] == "id"


def test_columns_of_any_arrow_type_travel_and_the_year_comes_from_the_timestamp(hostile_run):
    result, cat, table = hostile_run
    src = pq.read_table(result.run_dir / "stages" / "source" / "00000.parquet").to_pylist()[0]
    assert src["created_at"] == "2021-01-01T01:30:00+09:00"  # ISO text in its own offset
    assert src["updated_at"] == "2021-01-01T01:30:00" and src["approved"] == "2020-12-31"
    assert src["score_value"] == "0.25" and "md5_raw" not in src
    manifest = read_manifest(result.catalog_dir)
    assert manifest["source"]["dropped_columns"] == {"md5_raw": "fixed_size_binary[16]: binary columns are not carried"}
    ok = cat[cat["status"] == "ok"]
    assert ok.iloc[0]["year"] == 2021  # 2020-12-31 16:30 UTC is 2021 in the timestamp's own offset
    assert (ok["rating"] == "general").all() and ok["tags"].map(list).map(sorted).eq(
        [["1girl", "solo"]] * len(ok)
    ).all()
    assert not cat["error"].fillna("").str.contains("lost this sample").any()
