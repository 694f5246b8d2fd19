"""``zxl catalog browse``: a web page over a catalog, on 127.0.0.1 by default.

Flask with Jinja2 templates (autoescaping on: every caption, tag and error is scraped data and is
rendered as text). Every filter lives in the URL, so a view can be shared. Queries go to DuckDB
with bound parameters only — a request's values never become SQL. Images are read from the tar
shards by key through ``ImageStore`` (never from a path in the request); thumbnails are made once
and kept in memory.

The catalog itself is never written. What the user enters — choices between two images in the
**rate** view (keyboard: ← / → the better one, ↓ or S skip, U undo) and 1–9 stars on a row's page —
goes to ``runs/<name>/taste/choices.sqlite`` (catalog/rating.py) through JSON POSTs that a page of
another origin cannot make (a JSON content type is required, which a cross-site form cannot send,
and a foreign ``Origin`` is refused). The **clusters** view shows the k-means clusters of the
diversity-aware repeats (pipeline/weigh.py): sizes, mean scores, a grid of each.
"""

from __future__ import annotations

import io
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from flask import Flask, Response, abort, jsonify, render_template, request, url_for
from PIL import Image

from zxl.catalog.embeddings import read_embeddings
from zxl.catalog.images import ImageStore
from zxl.catalog.query import Catalog, open_catalog
from zxl.catalog.rating import ChoiceStore, PairPicker, choices_path, clean_rater
from zxl.images import decode

SORTS = {  # ties broken by load order (rid): cheap, and stable from page to page
    "aesthetic": "aesthetic DESC NULLS LAST, rid",
    "score": "score DESC NULLS LAST, aesthetic DESC NULLS LAST, rid",
    "year": "year DESC NULLS LAST, rid",
    "oldest": "year ASC NULLS LAST, rid",
    "key": "key",
}
PER_PAGE = (24, 48, 96)
STATUSES = ("ok", "duplicate", "failed_download", "failed_decode", "filtered", "all")
RATINGS = ("general", "sensitive", "questionable", "explicit")
THUMB = 256
MAX_PAGE = 10**9  # any page number above the last shows the last


def _int(value: str | None, lo: int | None = None, hi: int | None = None) -> int | None:
    try:
        v = int(value) if value not in (None, "") else None
    except ValueError:
        return None
    if v is not None and lo is not None:
        v = max(lo, v)
    if v is not None and hi is not None:
        v = min(hi, v)
    return v


def parse_filters(args) -> dict:
    """The URL's query string → a normalized filter dict (unknown values are ignored, not trusted)."""
    f = {
        "score_min": _int(args.get("score_min"), 1, 9),
        "score_max": _int(args.get("score_max"), 1, 9),
        "year_min": _int(args.get("year_min"), 1900, 2100),
        "year_max": _int(args.get("year_max"), 1900, 2100),
        "rating": [r for r in args.getlist("rating") if r in RATINGS],
        "bucket": args.get("bucket", "")[:20],
        "status": args.get("status", "ok") if args.get("status", "ok") in STATUSES else "ok",
        "tag": [t.strip()[:100] for t in args.getlist("tag") if t.strip()][:10],
        "not_tag": [t.strip()[:100] for t in args.getlist("not_tag") if t.strip()][:10],
        "q": args.get("q", "").strip()[:200],
        "cluster": _int(args.get("cluster"), 0, 10**6),
        "sort": args.get("sort", "aesthetic") if args.get("sort", "aesthetic") in SORTS else "aesthetic",
        "per_page": _int(args.get("per_page")) if _int(args.get("per_page")) in PER_PAGE else PER_PAGE[0],
        "page": _int(args.get("page"), 1, MAX_PAGE) or 1,  # and at most the last page (index)
    }
    return f


def where_clause(f: dict) -> tuple[str, list]:
    """SQL WHERE with ? placeholders, and their values."""
    sql, params = [], []
    if f["status"] != "all":
        sql.append("status = ?")
        params.append(f["status"])
    for col, op, key in (("score", ">=", "score_min"), ("score", "<=", "score_max"),
                         ("year", ">=", "year_min"), ("year", "<=", "year_max")):  # fmt: skip
        if f[key] is not None:
            sql.append(f"{col} {op} ?")
            params.append(f[key])
    if f["rating"]:
        sql.append(f"rating IN ({', '.join('?' * len(f['rating']))})")
        params.extend(f["rating"])
    if f["bucket"]:
        sql.append("bucket = ?")
        params.append(f["bucket"])
    for t in f["tag"]:  # through the tag index: a hash semi-join instead of scanning every list
        sql.append("rid IN (SELECT rid FROM tag_index WHERE tag = ?)")
        params.append(t)
    for t in f["not_tag"]:
        sql.append("rid NOT IN (SELECT rid FROM tag_index WHERE tag = ?)")
        params.append(t)
    if f.get("cluster") is not None:
        sql.append("cluster = ?")
        params.append(f["cluster"])
    if f["q"]:
        sql.append("caption ILIKE ?")
        params.append("%" + f["q"].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
    return (" AND ".join(sql) or "true"), params


class Browser:
    """The catalog, a DuckDB connection per thread, and the thumbnail cache."""

    def __init__(self, catalog: Catalog, thumbs: int = 4096):
        self.catalog = catalog
        self.images = ImageStore(catalog.path)
        # Read the parts once into DuckDB's own columnar storage, with a row id and an index of
        # (tag, row id): every page then filters and sorts in memory instead of decoding Parquet
        # again. Each thread gets a cursor on the one database.
        self._db = catalog.connect()
        self._db.execute("SET enable_progress_bar = false")
        self._db.execute("CREATE TABLE rows AS SELECT row_number() OVER () - 1 AS rid, * FROM catalog")
        self._db.execute("DROP VIEW catalog")
        self._db.execute("ALTER TABLE rows RENAME TO catalog")
        self._db.execute(
            "CREATE TABLE tag_index AS SELECT tag, rid FROM (SELECT unnest(tags) AS tag, rid FROM catalog "
            "UNION ALL SELECT unnest(characters) AS tag, rid FROM catalog) ORDER BY tag"
        )
        self._local = threading.local()
        self._thumbs: OrderedDict[str, bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()
        self._max_thumbs = thumbs

    def con(self):
        if not hasattr(self._local, "con"):
            self._local.con = self._db.cursor()
        return self._local.con

    def rows(self, sql: str, params: list) -> list[dict]:
        return self.con().sql(sql, params=params).to_arrow_table().to_pylist()

    def page(self, f: dict) -> list[dict]:
        """One page of rows: the top-k on row ids first, then the columns of just those rows."""
        where, params = where_clause(f)
        order = SORTS[f["sort"]]
        offset = (f["page"] - 1) * f["per_page"]
        return self.rows(
            "SELECT key, status, error, score, aesthetic, rating, year, bucket, width, height, tags, characters, "
            f"caption, duplicate_of FROM catalog WHERE rid IN (SELECT rid FROM catalog WHERE {where} ORDER BY {order} "
            f"LIMIT ? OFFSET ?) ORDER BY {order}",
            [*params, f["per_page"], offset],
        )

    def summary(self, f: dict) -> tuple[int, dict]:
        """The number of matching rows and the score, rating and year charts, in one pass."""
        where, params = where_clause(f)
        data = (
            self.con()
            .sql(
                f"SELECT score, rating, year, GROUPING(score) AS gs, GROUPING(rating) AS gr, GROUPING(year) AS gy, "
                f"count(*) FROM catalog WHERE {where} GROUP BY GROUPING SETS ((score), (rating), (year), ())",
                params=params,
            )
            .fetchall()
        )
        total, charts = 0, {"score": [], "rating": [], "year": []}
        for score, rating, year, gs, gr, gy, n in data:
            if gs and gr and gy:
                total = n
            elif not gs:
                charts["score"].append((score, n))
            elif not gr:
                charts["rating"].append((rating, n))
            else:
                charts["year"].append((year, n))
        for name, bars in charts.items():
            bars.sort(key=lambda kv: (kv[0] is None, kv[0] if kv[0] is not None else 0))
            top = max((n for _, n in bars), default=1)
            charts[name] = [("—" if k is None else k, n, round(100 * n / top)) for k, n in bars]
        return total, charts

    def row(self, key: str) -> dict | None:
        rows = self.rows("SELECT * FROM catalog WHERE key = ?", [key])
        return rows[0] if rows else None

    def duplicates(self, row: dict) -> list[dict]:
        group = row["duplicate_of"] or row["key"]
        return self.rows(
            "SELECT key, status, score, aesthetic, width, height FROM catalog "
            "WHERE (key = ? OR duplicate_of = ?) AND key <> ? ORDER BY aesthetic DESC NULLS LAST LIMIT 50",
            [group, group, row["key"]],
        )

    def clusters(self, per_cluster: int = 12) -> list[dict]:
        """Every cluster of the trainable rows: size, mean score, draws per epoch, its best rows."""
        stats = self.rows(
            "SELECT cluster, count(*) AS size, avg(score) AS mean_score, sum(weight) AS weight, "
            "sum(repeats) AS repeats FROM catalog WHERE status = 'ok' AND cluster IS NOT NULL "
            "GROUP BY cluster ORDER BY cluster",
            [],
        )
        top = self.rows(
            "SELECT cluster, key, score FROM (SELECT cluster, key, score, row_number() OVER (PARTITION BY cluster "
            "ORDER BY aesthetic DESC NULLS LAST, rid) AS n FROM catalog WHERE status = 'ok' AND cluster IS NOT NULL) "
            "WHERE n <= ? ORDER BY cluster, n",
            [per_cluster],
        )
        for c in stats:
            c["rows"] = [r for r in top if r["cluster"] == c["cluster"]]
        return stats

    def image(self, key: str) -> tuple[bytes, str] | None:
        rows = self.rows("SELECT shard, shard_key FROM catalog WHERE key = ? AND shard_key IS NOT NULL", [key])
        if not rows:
            return None
        try:
            return self.images.get(rows[0]["shard"], rows[0]["shard_key"])
        except (KeyError, FileNotFoundError):
            return None

    def thumbnail(self, key: str) -> bytes | None:
        with self._thumb_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        found = self.image(key)
        if found is None:
            return None
        with decode(found[0]) as im:
            im.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        with self._thumb_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > self._max_thumbs:
                self._thumbs.popitem(last=False)
        return data


class Taste:
    """The rate view's state: the choice database and, built on first use, the pair picker over the
    run's stored embeddings (``runs/<name>/embeddings``; the catalog folder sits in the run folder)."""

    def __init__(self, browser: Browser, run_dir: Path):
        self.browser, self.run_dir = browser, run_dir
        self.path = choices_path(run_dir)
        self._store: ChoiceStore | None = None
        self._picker: PairPicker | None = None
        self._lock = threading.Lock()
        self.missing = ""

    @property
    def store(self) -> ChoiceStore:
        """The database, opened (and created) when first needed: browsing alone writes nothing, so a
        catalog in a read-only folder still browses."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    try:
                        self._store = ChoiceStore(self.path)
                    except (OSError, sqlite3.Error) as e:
                        abort(Response(f"cannot keep choices in {self.path}: {e}", 503))
        return self._store

    def stars_of(self, key: str) -> dict[str, int]:
        return self.store.stars_of(key) if self._store is not None or self.path.exists() else {}

    def picker(self) -> PairPicker | None:
        store = self.store
        with self._lock:
            if self._picker is None and not self.missing:
                rows = self.browser.rows("SELECT key, score FROM catalog WHERE status = 'ok' AND score IS NOT NULL", [])
                score = {r["key"]: r["score"] for r in rows}
                keys, emb = read_embeddings(self.run_dir, dtype=np.float16)
                if emb is None:
                    self.missing = (f"no stored embeddings in {self.run_dir / 'embeddings'}: rerun `zxl curate` "
                                    "(every scorer stores them now) to rate pairs")  # fmt: skip
                    return None
                keep = [i for i, k in enumerate(keys) if k in score]
                if len(keep) < len(keys):  # duplicates and unscored rows out (a copy only then)
                    keys, emb = [keys[i] for i in keep], emb[keep]
                self._picker = PairPicker(keys, emb, np.array([score[k] for k in keys]), store)
            return self._picker


def _json_post() -> dict:
    """The body of a POST from our own page: JSON (a cross-site form cannot send it), same origin."""
    origin = request.headers.get("Origin")
    if origin and origin.rstrip("/") != request.host_url.rstrip("/"):
        abort(403)
    if not request.is_json:
        abort(415)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400)
    return body


def create_app(catalog_dir: str | Path) -> Flask:
    catalog = open_catalog(catalog_dir)
    browser = Browser(catalog)
    app = Flask(__name__, template_folder=str(Path(__file__).parent / "templates"),
                static_folder=str(Path(__file__).parent / "static"))  # fmt: skip
    app.config["BROWSER"] = browser
    taste = Taste(browser, Path(catalog_dir).resolve().parent)
    app.config["TASTE"] = taste

    def page_url(f: dict, **change) -> str:
        g = {**f, **change}
        args = {k: v for k, v in g.items() if v not in (None, "", [])}
        return url_for("index", **args)

    @app.get("/")
    def index():
        f = parse_filters(request.args)
        total, charts = browser.summary(f)
        pages = max(1, -(-total // f["per_page"]))
        f["page"] = min(f["page"], pages)
        rows = browser.page(f)
        return render_template(
            "index.html", rows=rows, total=total, f=f, pages=pages, charts=charts,
            manifest=catalog.manifest, problems=catalog.problems, sorts=SORTS, statuses=STATUSES,
            ratings=RATINGS, per_page=PER_PAGE, page_url=page_url,
        )  # fmt: skip

    @app.get("/row/<path:key>")  # a key may hold "/"
    def detail(key: str):
        row = browser.row(key)
        if row is None:
            abort(404)
        return render_template("row.html", row=row, duplicates=browser.duplicates(row), problems=catalog.problems,
                               stars=taste.stars_of(key))  # fmt: skip

    @app.get("/rate")
    def rate():
        return render_template("rate.html", counts=taste.store.counts(), problems=catalog.problems,
                               db=str(taste.store.path))  # fmt: skip

    @app.get("/clusters")
    def clusters():
        diversity = catalog.manifest.get("diversity")
        return render_template("clusters.html", clusters=browser.clusters(), diversity=diversity,
                               problems=catalog.problems)  # fmt: skip

    def _pair_reply(pair: dict | None):
        counts = taste.store.counts()
        if pair is None:
            return jsonify({"pair": None, "counts": counts, "message": taste.missing or "every pair has been shown"})
        return jsonify({"pair": pair, "counts": counts})

    @app.get("/api/pair")
    def api_pair():
        return _pair_reply(taste.picker() and taste.picker().next_pair())

    def _rater(body: dict) -> str:
        try:
            return clean_rater(body.get("rater", ""))
        except ValueError as e:
            abort(Response(str(e), 400))

    @app.post("/api/choice")
    def api_choice():
        body = _json_post()
        rater = _rater(body)
        picker = taste.picker()
        left, right, side = body.get("left"), body.get("right"), body.get("winner")
        if picker is None or left not in picker.index or right not in picker.index or left == right:
            abort(Response("left and right must be two trainable rows of this catalog", 400))
        if side not in ("left", "right", None):
            abort(Response("winner is left, right or null (skip)", 400))
        winner = {"left": left, "right": right, None: None}[side]
        choice_id = taste.store.add_choice(rater, left, right, winner, bool(body.get("probe", False)))
        return jsonify({"saved": choice_id, "counts": taste.store.counts()})

    @app.post("/api/undo")
    def api_undo():
        undone = taste.store.undo(_rater(_json_post()))
        return jsonify({"undone": undone, "counts": taste.store.counts()})

    @app.post("/api/stars")
    def api_stars():
        body = _json_post()
        rater, key, stars = _rater(body), body.get("key"), body.get("stars")
        if not isinstance(key, str) or browser.row(key) is None:
            abort(Response("no such row", 400))
        if stars is not None and (not isinstance(stars, int) or not 1 <= stars <= 9):
            abort(Response("stars are 1..9, or null to take them back", 400))
        taste.store.set_stars(rater, key, stars)
        return jsonify({"key": key, "stars": taste.store.stars_of(key)})

    @app.get("/image/<path:key>")  # a key may hold "/"
    def image(key: str):
        found = browser.image(key)
        if found is None:
            abort(404)
        data, ext = found
        return Response(data, mimetype={"jpg": "image/jpeg", "jpeg": "image/jpeg"}.get(ext, f"image/{ext}"))

    @app.get("/thumb/<path:key>")  # a key may hold "/"
    def thumb(key: str):
        data = browser.thumbnail(key)
        if data is None:
            abort(404)
        return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.after_request
    def headers(resp):
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'"
        return resp

    return app


def serve(catalog_dir: str | Path, host: str = "127.0.0.1", port: int = 8765):
    """A threaded server for ``create_app``; returns it (``serve_forever`` / ``shutdown``)."""
    from werkzeug.serving import make_server

    return make_server(host, port, create_app(catalog_dir), threaded=True)
