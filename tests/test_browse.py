"""The catalog browser over HTTP, and in a real browser: Playwright driving Debian's chromium."""

import re
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zxl.catalog.browse import parse_filters, serve, where_clause

CHROMIUM = "/usr/bin/chromium"
HOSTILE_CAPTION = '<script>window.__pwned = 1</script>"><b>bold?</b>'
HOSTILE_TAG = "<img src=x onerror=window.__pwned=2>"
SLASH_KEY = "art/2021/5#2?x"
_SITE_RUN: dict = {}


@pytest.fixture(scope="module")
def site(sync_run, tmp_path_factory):
    """A copy of the demo run whose best row carries hostile strings, served on a free port."""
    run = tmp_path_factory.mktemp("browse") / "run"
    shutil.copytree(sync_run[1].run_dir / "catalog", run / "catalog")
    (run / "shards").symlink_to(sync_run[1].run_dir / "shards")
    (run / "embeddings").symlink_to(sync_run[1].run_dir / "embeddings")
    part = sorted((run / "catalog").glob("part-*.parquet"))[0]
    t = pq.read_table(part)
    ok = [i for i, s in enumerate(t["status"].to_pylist()) if s == "ok"]
    hostile_key = t["key"][ok[0]].as_py()
    captions = t["caption"].to_pylist()
    captions[ok[0]] = HOSTILE_CAPTION
    tags = t["tags"].to_pylist()
    tags[ok[0]] = [HOSTILE_TAG, *(tags[ok[0]] or [])]
    keys = t["key"].to_pylist()
    keys[ok[1]] = SLASH_KEY  # a source id may hold "/" (and "#", "?")
    t = t.set_column(t.schema.get_field_index("key"), "key", pa.array(keys, pa.string()))
    t = t.set_column(t.schema.get_field_index("caption"), "caption", pa.array(captions, pa.string()))
    t = t.set_column(t.schema.get_field_index("tags"), "tags", pa.array(tags, pa.list_(pa.string())))
    pq.write_table(t, part)
    server = serve(run / "catalog", "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _SITE_RUN[f"http://127.0.0.1:{server.server_port}"] = run
    yield f"http://127.0.0.1:{server.server_port}", hostile_key
    server.shutdown()


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def test_any_key_opens_and_any_page_number_answers(site):
    base, _ = site
    quoted = urllib.parse.quote(SLASH_KEY, safe="")
    for route in ("row", "thumb", "image"):
        assert _get(f"{base}/{route}/{quoted}")[0] == 200, route
    body = b"".join(_get(f"{base}/?status=all&sort=key&per_page=96&page={n}")[2] for n in (1, 2))
    assert f'href="/row/{urllib.parse.quote(SLASH_KEY, safe="/")}"'.encode() in body  # the link the page gives
    assert _get(f"{base}/row/{urllib.parse.quote(SLASH_KEY, safe='/')}")[0] == 200
    for page in ("9999999999999999999", "-5", "1e9", "abc"):
        status, _, body = _get(f"{base}/?status=all&page={page}")
        assert status == 200 and b'class="card"' in body, page  # beyond the end: the last page
    assert b'id="next"' not in _get(f"{base}/?status=all&page=9999999999999999999")[2]


def test_filters_are_parameters_not_sql():
    from werkzeug.datastructures import MultiDict

    f = parse_filters(MultiDict([("score_min", "8"), ("rating", "general"), ("rating", "'; DROP TABLE x; --"),
                                 ("sort", "key; DROP"), ("per_page", "5000"), ("tag", "a' OR 1=1 --")]))  # fmt: skip
    assert f["rating"] == ["general"] and f["sort"] == "aesthetic" and f["per_page"] == 24
    sql, params = where_clause(f)
    assert "DROP" not in sql and "OR 1=1" not in sql and "a' OR 1=1 --" in params


def test_pages_images_and_refusals(site):
    base, key = site
    status, kind, body = _get(f"{base}/?score_min=8&rating=general")
    assert status == 200 and kind.startswith("text/html") and b"score_" in body
    status, kind, body = _get(f"{base}/thumb/{key}")
    assert kind == "image/jpeg" and body[:2] == b"\xff\xd8"
    status, _, original = _get(f"{base}/image/{key}")
    assert status == 200
    # made from a reduced decode (twice its side), it is the whole image's thumbnail within JPEG noise
    import io

    import numpy as np
    from PIL import Image

    from zxl.catalog.browse import THUMB

    whole = Image.open(io.BytesIO(original)).convert("RGB")
    whole.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    thumb = Image.open(io.BytesIO(body)).convert("RGB")
    assert thumb.size == whole.size
    assert np.abs(np.asarray(thumb, np.float32) - np.asarray(whole, np.float32)).mean() < 4
    for path in ("/image/..%2F..%2Fetc%2Fpasswd", "/thumb/%2Fetc%2Fpasswd", "/row/..%2F_manifest.json",
                 "/image/../../catalog/_manifest.json", "/static/../../etc/passwd", "/row/no-such-key"):  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(base + path)
        assert e.value.code == 404, path


def test_in_a_real_browser(site, tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run `make browser` (make test does)"
    base, hostile_key = site
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base + "/")
        assert page.locator(".card").count() > 0
        page.fill("#score_min", "8")
        page.check("input[name=rating][value=general]")
        page.click("#apply")
        page.wait_for_load_state()
        assert "score_min=8" in page.url and "rating=general" in page.url  # the view is in the URL
        badges = page.locator(".card .badge.score").all_inner_texts()
        assert badges and all(b in ("score_8", "score_9") for b in badges)
        ratings = page.locator(".card .meta").all_inner_texts()
        assert all("general" in r for r in ratings)
        page.screenshot(path=str(tmp_path / "grid.png"))
        page.locator(".card").first.click()
        page.wait_for_selector("#row")
        assert "status" in page.locator("#row").inner_text()
        # scraped strings are text, never markup
        page.goto(f"{base}/?status=ok&sort=key&per_page=96")
        card = page.locator(f'.card[data-key="{hostile_key}"]')
        if card.count() and "score_" in card.inner_text():
            assert HOSTILE_CAPTION in card.inner_text() or "<img" not in card.inner_html()
        assert page.evaluate("window.__pwned") is None
        page.goto(f"{base}/row/{hostile_key}")
        text = page.locator("#row").inner_text()
        assert HOSTILE_CAPTION in text and HOSTILE_TAG in text
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#row b").count() == 0
        browser.close()
    assert (tmp_path / "grid.png").stat().st_size > 10_000


def _launch(p):
    return p.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )  # fmt: skip


def _post(url, body: bytes, headers: dict):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_writes_come_only_from_our_own_page(site):
    base, _ = site
    import json

    pair = json.loads(_get(f"{base}/api/pair")[2])["pair"]
    body = json.dumps({"rater": "eve", "left": pair["left"], "right": pair["right"], "winner": "left"}).encode()
    form = urllib.parse.urlencode({"rater": "eve"}).encode()
    assert _post(f"{base}/api/choice", form, {"Content-Type": "application/x-www-form-urlencoded"}) == 415
    assert _post(f"{base}/api/choice", body, {"Content-Type": "text/plain"}) == 415  # what a cross-site form sends
    assert _post(f"{base}/api/choice", body, {"Content-Type": "application/json", "Origin": "http://evil.test"}) == 403
    bad = json.dumps({"rater": "eve", "left": "no such key", "right": pair["right"], "winner": "left"}).encode()
    assert _post(f"{base}/api/choice", bad, {"Content-Type": "application/json"}) == 400
    nameless = json.dumps({"rater": " ", "left": pair["left"], "right": pair["right"], "winner": "left"}).encode()
    assert _post(f"{base}/api/choice", nameless, {"Content-Type": "application/json"}) == 400


def test_rate_view_by_keyboard_lands_in_the_database(site, tmp_path):
    from playwright.sync_api import sync_playwright

    from zxl.catalog.choices import ChoiceStore

    base, _ = site
    db = site_run(site) / "taste" / "choices.sqlite"
    before = len(ChoiceStore(db).choices())
    with sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base + "/rate")
        page.wait_for_selector("body[data-pair]")  # (the page's CSP forbids eval: selectors, not JS predicates)
        # both pictures at the same display size, whatever their real sizes, each real size beside it
        boxes = [page.locator(f"#{side} img").bounding_box() for side in ("left", "right")]
        assert boxes[0]["width"] == boxes[1]["width"] > 300 and boxes[0]["height"] == boxes[1]["height"] > 300
        assert all(re.fullmatch(r"\d+×\d+ px", page.inner_text(f"#{side} .size")) for side in ("left", "right"))
        page.keyboard.press("ArrowLeft")  # no name yet: nothing is saved, the page says why
        page.wait_for_selector("#status:has-text('enter your name')")
        page.fill("#rater", "ann")
        page.locator("#rater").dispatch_event("change")
        page.locator("body").click(position={"x": 5, "y": 5})
        chosen = []
        for key in ("ArrowLeft", "ArrowRight", "ArrowLeft", "s", "ArrowRight", "u"):
            shown = page.evaluate("document.body.dataset.pair").split("\n")
            chosen.append((key, shown))
            page.keyboard.press(key)
            page.wait_for_selector("body[data-busy='0']", state="attached")
        page.screenshot(path=str(tmp_path / "rate.png"))
        # after the undo the undone pair is shown again
        assert page.evaluate("document.body.dataset.pair").split("\n") == chosen[4][1]
        # stars on a row's page
        left = chosen[0][1][0]
        page.goto(f"{base}/row/{urllib.parse.quote(left, safe='/')}")
        page.click("#stars button[data-stars='8']")
        page.wait_for_selector("#stars[data-mine='8']")
        page.goto(base + "/clusters")
        assert page.locator("section.cluster").count() >= 2 and "Effective clusters" in page.inner_text("#summary")
        page.locator("section.cluster h3 a").first.click()
        page.wait_for_load_state()
        assert "cluster=" in page.url and page.locator(".card").count() > 0
        browser.close()
    store = ChoiceStore(db)
    got = store.choices()[before:]
    expect = [(shown[0] if key == "ArrowLeft" else shown[1]) for key, shown in chosen[:3]]
    assert [w for w, *_ in got] == expect and all(r == "ann" for _, _, r, *_ in got)  # the undone 4th is not there
    assert store.counts()["undone"] >= 1 and store.stars_of(left) == {"ann": 8}
    assert (tmp_path / "rate.png").stat().st_size > 10_000


def site_run(site):
    """The run folder the site serves (its catalog's parent)."""
    base, _ = site
    return _SITE_RUN[base]


def test_browsing_alone_writes_nothing(sync_run, tmp_path):
    """Only rating creates runs/<name>/taste: a catalog in a read-only folder still browses."""
    from zxl.catalog.browse import create_app

    run = tmp_path / "run"
    shutil.copytree(sync_run[1].run_dir / "catalog", run / "catalog")
    (run / "shards").symlink_to(sync_run[1].run_dir / "shards")
    client = create_app(run / "catalog").test_client()
    key = client.get("/api/pair").get_json()  # reading a pair opens the database: it is the rate view
    shutil.rmtree(run / "taste")
    assert key["pair"] is None and "no stored embeddings" in key["message"]  # and this copy has none
    assert client.get("/").status_code == 200 and client.get("/clusters").status_code == 200
    first = pq.read_table(sorted((run / "catalog").glob("part-*.parquet"))[0], columns=["key", "status"])
    ok = [k for k, s in zip(first["key"].to_pylist(), first["status"].to_pylist(), strict=True) if s == "ok"]
    assert client.get(f"/row/{ok[0]}").status_code == 200
    assert not (run / "taste").exists()


def test_the_index_overview_of_tags_and_caption_tokens(tmp_path):
    """The index page's overview (tags per category, caption tokens, score-year rho) and its JSON,
    on a catalog written here: tag names are text, never markup."""
    import html
    import json

    from zxl.catalog.browse import create_app
    from zxl.catalog.schema import SCHEMA

    folder = tmp_path / "run" / "catalog"
    folder.mkdir(parents=True)
    rows = [{"key": f"k{i}", "url": f"http://x/{i}", "status": "ok", "repeats": 1, "score": 1 + i % 9,
             "year": 2010 + i, "rating": "general", "tags": [HOSTILE_TAG, "solo"] if i < 3 else ["solo"],
             "characters": ["hatsune_miku"], "artists": ['<b>"artist"</b>'] if i % 2 else None}
            for i in range(6)]  # fmt: skip
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in SCHEMA} for r in rows], schema=SCHEMA)
    pq.write_table(table, folder / "part-00000.parquet")
    manifest = {
        "schema_version": 2,
        "rows": 6,
        "parts": ["part-00000.parquet"],
        "score_year": {"rows": 6, "rho": 0.5, "rho_global_edges": 0.75},
        "score_edges": {"within": ["year"]},
    }
    (folder / "_manifest.json").write_text(json.dumps(manifest))  # fmt: skip
    client = create_app(folder).test_client()
    page = client.get("/")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert 'id="overview"' in body and 'id="tags-general"' in body and 'id="chart-tokens"' in body
    assert HOSTILE_TAG not in body and html.escape(HOSTILE_TAG) in body  # the top general tag, escaped
    assert "<b>" not in body and "&lt;b&gt;&#34;artist&#34;&lt;/b&gt;" in body
    assert "score–year ρ +1.000" in body and "score tags cut within year" in body and "+0.750 with global edges" in body
    ov = client.get("/api/overview").get_json()
    assert ov["tag_categories"]["general"]["top"] == [["solo", 6], [HOSTILE_TAG, 3]]
    assert ov["tag_categories"]["artists"] == {"distinct": 1, "instances": 3, "top": [['<b>"artist"</b>', 3]]}
    assert ov["tag_categories"]["meta"]["distinct"] == 0 and ov["score_year"]["rows"] == 6
    tl = ov["token_lengths"]
    assert tl["rows"] == 6 and not tl["sampled"] and f"max {tl['max']} · over 75: 0" in body
    assert not (tmp_path / "run" / "taste").exists()  # browsing alone writes nothing
