"""``zxl catalog browse``: a web page over a catalog, on 127.0.0.1 by default.

Flask with Jinja2 templates (autoescaping on: every caption, tag and error is scraped data and is
rendered as text). Every filter lives in the URL, so a view can be shared. Queries go to DuckDB
with bound parameters only — a request's values never become SQL. Images are read from the tar
shards by key through ``ImageStore`` (never from a path in the request); thumbnails are made once
and kept in memory.

The catalog itself is never written. What the user enters — choices between two images in the
**rate** view (keyboard: ← / → the better one, ↓ or S skip, U undo) and 1–9 stars on a row's page —
goes to ``runs/<name>/taste/choices.sqlite`` (catalog/choices.py) through JSON POSTs that a page of
another origin cannot make (a JSON content type is required, which a cross-site form cannot send,
and a foreign ``Origin`` is refused). The **clusters** view shows the k-means clusters of the
diversity-aware repeats (pipeline/weigh.py): sizes, mean scores, a grid of each. The index page's
**overview** (also ``/api/overview``) shows what a curator reads about the trainable rows
(catalog/tagstats.py): the top tags of each category, the captions' CLIP token lengths and the
score–year ρ, made once per server.

Hostile requests (docs/reliability.md):

- **Host allow-list.** Every request must name, in its ``Host`` header, an address the server
  listens on: 127.0.0.1, localhost or [::1] (or the ``--host`` given, and any ``--allow-host``)
  with the server's port; anything else is answered 421 and changes nothing. A page that rebinds its
  own name to 127.0.0.1 (DNS rebinding) sends its own name as the Host, so it can neither read the
  catalog nor write a choice, although its Origin would match that Host.
- **Bounded bodies.** A body over ``MAX_BODY`` (64 KiB) is answered 413 from its Content-Length,
  before a byte of it is read; every socket read has a ``READ_TIMEOUT`` (a body that stops coming
  gets 408 and frees its thread; an idle connection is closed).
- **Validated fields.** A body that is not a JSON object (or nests deeper than JSON needs) and every
  field of the wrong type get 400 with the reason. The server alone decides whether a pair was a
  probe: a choice is accepted only for a pair this server offered, and its probe flag is the one
  the server recorded when it offered the pair. Posting the same choice again is idempotent: while
  the rater's choice on that pair stands, the same answer returns the stored choice's id and adds no
  row, another answer is 409 (undo it first). Stars are integers 1–9 (``true`` is not a star), on
  rows the page offers them for (``ok`` rows).
- **Choices apart from browsing.** A choice database that cannot be read (damaged, not SQLite,
  another program's tables) leaves every browsing page working; row pages say stars are
  unavailable and why, the rate view and the API answer 503 with the reason.
"""

from __future__ import annotations

import io
import json
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Literal, NoReturn, overload

import numpy as np
from flask import Flask, Response, abort, jsonify, render_template, request, url_for
from PIL import Image
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.serving import WSGIRequestHandler

from zxl.catalog.choices import ChoicesError, ChoiceStore, PairPicker, choices_path, clean_rater
from zxl.catalog.embeddings import read_embeddings
from zxl.catalog.images import ImageStore
from zxl.catalog.query import Catalog, open_catalog
from zxl.catalog.tagstats import curation
from zxl.images import decode_reduced

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
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 64 * 1024  # the largest POST the page sends is well under 1 KB
READ_TIMEOUT = 10.0  # seconds per socket read: a body (or headers) that stop coming free their thread
BODY_DEADLINE = 20.0  # seconds for a whole body (a trickle of a byte every few seconds stops here)
MAX_DEPTH = 4  # a choice or stars body is one flat object
OFFERED = 10_000  # pairs offered and not yet answered that the server remembers


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
        self._overview: dict | None = None
        self._overview_lock = threading.Lock()

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

    def overview(self) -> dict:
        """Tags per category, the captions' CLIP token lengths and the score–year ρ of the trainable
        rows (catalog/tagstats.py), with the token-length histogram as the page's bars. The same for
        every view: made once (``serve`` makes it before answering; counting tokens takes seconds)."""
        with self._overview_lock:
            if self._overview is None:
                ov = curation(self.con(), self.catalog.manifest)
                bins = ov["token_lengths"].get("histogram") or []
                top = max((n for _, n in bins), default=1) or 1
                ov["token_bars"] = [(k, n, round(100 * n / top)) for k, n in bins]
                self._overview = ov
        return self._overview

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
        # reduced to twice the thumbnail's long side first (a JPEG by DCT scaling), as PIL's own
        # thumbnail() does with an image it has not decoded yet: a fraction of a full decode
        im, _ = decode_reduced(found[0], 2 * THUMB, long=True)
        with im:
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
        # pair → probe flag, for every pair offered and not yet answered (the server's record, not the page's)
        self._offered: OrderedDict[frozenset, bool] = OrderedDict()
        self.choosing = threading.Lock()

    def open_store(self) -> ChoiceStore:
        """The database, opened (and created) when first needed: browsing alone writes nothing, so a
        catalog in a read-only folder still browses. Raises ChoicesError when it cannot be used."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    try:
                        self._store = ChoiceStore(self.path)
                    except OSError as e:
                        raise ChoicesError(f"cannot keep choices in {self.path}: {e}") from None
        return self._store

    @property
    def store(self) -> ChoiceStore:
        """``open_store`` for a request: a database that cannot be used is a 503 saying why."""
        try:
            return self.open_store()
        except ChoicesError as e:
            abort(Response(str(e), 503, mimetype="text/plain"))

    def stars_of(self, key: str) -> tuple[dict[str, int], str]:
        """Everyone's stars for ``key`` and, when the database cannot be read, why (browsing goes on)."""
        if self._store is None and not self.path.exists():
            return {}, ""
        try:
            return self.open_store().stars_of(key), ""
        except ChoicesError as e:
            return {}, str(e)

    def offer(self, pair: dict) -> None:
        with self._lock:
            self._offered[frozenset((pair["left"], pair["right"]))] = bool(pair["probe"])
            while len(self._offered) > OFFERED:
                self._offered.popitem(last=False)

    def offered(self, left: str, right: str) -> bool | None:
        """The probe flag of a pair this server offered and nobody answered yet, else None."""
        with self._lock:
            return self._offered.get(frozenset((left, right)))

    def answered(self, left: str, right: str) -> None:
        with self._lock:
            self._offered.pop(frozenset((left, right)), None)

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


def _bad(reason: str, code: int = 400) -> NoReturn:
    abort(Response(reason, code, mimetype="text/plain"))


def _refuse_unread(reason: str, code: int) -> NoReturn:
    """Answer without reading the body, and keep the server from reading it after the answer too:
    Werkzeug drains what is left (up to 10 GB, 10 MB at a time) so the client sees the answer; our
    handler (``_Handler``) gives it an empty stream to drain instead. The socket is then closed."""
    handler = _handler()
    if handler is not None:
        handler.stop_reading()
    _bad(reason, code)


def _handler() -> _Handler | None:
    ref = request.environ.get("zxl.handler")
    return ref() if ref is not None else None


def _depth(text: str) -> int:
    """How deep JSON text nests (brackets outside strings), without parsing it."""
    depth = top = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            top = max(top, depth)
        elif ch in "]}":
            depth -= 1
    return top


def _json_post() -> dict:
    """The body of a POST from our own page: JSON (a cross-site form cannot send it), same origin,
    at most ``MAX_BODY`` bytes (413 from the Content-Length, before the body is read), one object."""
    origin = request.headers.get("Origin")
    if origin and origin.rstrip("/") != request.host_url.rstrip("/"):
        _bad(f"a write from another origin ({origin[:100]}) is refused", 403)
    if not request.is_json:
        _bad("a JSON body (Content-Type: application/json) is needed", 415)
    if request.content_length is None:  # chunked: the page always says how long its body is
        _refuse_unread("a body needs a Content-Length", 411)
    raw = _read_body(request.content_length)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        _bad("the body is not UTF-8")
    if _depth(text) > MAX_DEPTH:
        _bad(f"the body nests deeper than {MAX_DEPTH} levels; it is one flat JSON object")
    try:
        body = json.loads(text)
    except ValueError as e:
        _bad(f"the body is not JSON: {e}")
    if not isinstance(body, dict):
        _bad(f"the body is a JSON {type(body).__name__}, not an object")
    try:  # a lone surrogate (\\ud800) is valid JSON but no text a database can store
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        _bad("the body holds text that is not valid Unicode (a lone surrogate)")
    return body


def _read_body(length: int) -> bytes:
    """``length`` bytes of the body, within ``BODY_DEADLINE`` in all (each socket read also has
    ``READ_TIMEOUT``): a body that trickles in holds a thread for seconds, not days."""
    deadline = time.monotonic() + BODY_DEADLINE
    handler = _handler()
    # read1: what one socket read brings (a buffered read(n) would wait for all n bytes, a byte at a time)
    read = handler.rfile.read1 if handler is not None else request.stream.read
    parts, got = [], 0
    try:
        while got < length:
            if time.monotonic() > deadline:
                raise TimeoutError
            chunk = read(min(8192, length - got))
            if not chunk:
                raise ClientDisconnected
            parts.append(chunk)
            got += len(chunk)
    except RequestEntityTooLarge:
        _refuse_unread(f"the body is over {MAX_BODY} bytes", 413)
    except (ClientDisconnected, OSError):  # a read timed out, the deadline passed or the client went
        _refuse_unread(f"the body did not arrive whole within {BODY_DEADLINE:g} s", 408)
    return b"".join(parts)


@overload
def _str_field(body: dict, name: str, required: Literal[True] = True) -> str: ...
@overload
def _str_field(body: dict, name: str, required: bool) -> str | None: ...
def _str_field(body: dict, name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        _bad(f"{name} must be a string (a catalog key), not {type(value).__name__}")
    return value


def split_host(host: str) -> tuple[str, int | None]:
    """A Host header's name (lower case, IPv6 without brackets) and port (None when absent).
    Raises ValueError when it is not a host[:port]."""
    host = host.strip().lower()
    if host.startswith("["):
        name, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(host)
        port = rest[1:]
    else:
        name, _, port = host.partition(":")
        if ":" in port:
            raise ValueError(host)
    if not name or (port and not port.isdigit()):
        raise ValueError(host)
    return name, int(port) if port else None


def allowed_names(host: str = "127.0.0.1", allow: list[str] | tuple = ()) -> set[str]:
    """The names a request's Host may give: the loopback names, the bound address (unless it is a
    wildcard: then the user names their own with ``allow``) and ``allow``."""
    names: set[str] = set(LOOPBACK)
    bound = host.strip("[]").lower()
    if bound not in ("0.0.0.0", "::", ""):
        names.add(bound)
    for a in allow:
        try:
            name, port = split_host(f"[{a}]" if a.count(":") > 1 and not a.startswith("[") else a)  # bare IPv6
        except ValueError:
            raise ValueError(f"--allow-host {a!r} is not a host name or address") from None
        if port is not None:
            raise ValueError(f"--allow-host {a!r}: give the name alone; requests must use the server's own port")
        names.add(name)
    return names


def create_app(catalog_dir: str | Path, hosts: set[str] | None = None, port: int | None = None) -> Flask:
    """The app. ``hosts``: the names a request's Host may give (``allowed_names``; default the
    loopback names); ``port``: the port it must give (``serve`` sets it once bound)."""
    catalog = open_catalog(catalog_dir)
    browser = Browser(catalog)
    app = Flask(__name__, template_folder=str(Path(__file__).parent / "templates"),
                static_folder=str(Path(__file__).parent / "static"))  # fmt: skip
    app.config["BROWSER"] = browser
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["ALLOWED_HOSTS"] = set(hosts or LOOPBACK)
    app.config["PORT"] = port
    taste = Taste(browser, Path(catalog_dir).resolve().parent)
    app.config["TASTE"] = taste

    def page_url(f: dict, **change) -> str:
        g = {**f, **change}
        args = {k: v for k, v in g.items() if v not in (None, "", [])}
        return url_for("index", **args)

    @app.before_request
    def host_allowed():
        """421 for a Host this server is not (DNS rebinding), before anything is read or written."""
        try:
            name, port = split_host(request.host)
        except ValueError:
            _refuse_unread("the Host header is not host[:port]", 400)
        expected = app.config["PORT"]
        if name not in app.config["ALLOWED_HOSTS"] or (expected is not None and (port or 80) != expected):
            _refuse_unread(f"this server answers only for {', '.join(sorted(app.config['ALLOWED_HOSTS']))} on its "
                           "own port; start it with --allow-host NAME to reach it by another name", 421)  # fmt: skip
        if (request.content_length or 0) > MAX_BODY:  # from the header: not a byte of the body is read
            _refuse_unread(f"the body is over {MAX_BODY} bytes", 413)

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
            ratings=RATINGS, per_page=PER_PAGE, page_url=page_url, ov=browser.overview(),
        )  # fmt: skip

    @app.get("/api/overview")
    def api_overview():
        """The index page's overview as JSON: tags per category, caption token lengths, score–year ρ."""
        return jsonify({k: v for k, v in browser.overview().items() if k != "token_bars"})

    @app.get("/row/<path:key>")  # a key may hold "/"
    def detail(key: str):
        row = browser.row(key)
        if row is None:
            abort(404)
        stars, stars_problem = taste.stars_of(key)
        return render_template("row.html", row=row, duplicates=browser.duplicates(row), problems=catalog.problems,
                               stars=stars, stars_problem=stars_problem)  # fmt: skip

    @app.get("/rate")
    def rate():
        try:
            counts, problem = taste.open_store().counts(), ""
        except ChoicesError as e:
            counts, problem = {"choices": 0}, str(e)
        return render_template("rate.html", counts=counts, problems=catalog.problems, db=str(taste.path),
                               db_problem=problem), (503 if problem else 200)  # fmt: skip

    @app.get("/clusters")
    def clusters():
        diversity = catalog.manifest.get("diversity")
        return render_template("clusters.html", clusters=browser.clusters(), diversity=diversity,
                               problems=catalog.problems)  # fmt: skip

    def _pair_reply(pair: dict | None):
        counts = taste.store.counts()
        if pair is None:
            return jsonify({"pair": None, "counts": counts, "message": taste.missing or "every pair has been shown"})
        return jsonify({"pair": {**pair, **sizes(pair["left"], pair["right"])}, "counts": counts})

    def sizes(left: str, right: str) -> dict:
        """Each picture's real size, shown beside it (the page scales both to the same panel)."""
        rows = browser.rows("SELECT key, width, height FROM catalog WHERE key IN (?, ?)", [left, right])
        found = {r["key"]: [r["width"], r["height"]] for r in rows}
        return {"left_size": found.get(left), "right_size": found.get(right)}

    @app.get("/api/pair")
    def api_pair():
        picker = taste.picker()
        pair = picker.next_pair() if picker is not None else None
        if pair:
            taste.offer(pair)
        return _pair_reply(pair)

    def _rater(body: dict) -> str:
        if not isinstance(body.get("rater", ""), str):
            _bad("rater must be a string (your name)")
        try:
            return clean_rater(body.get("rater", ""))
        except ValueError as e:
            _bad(str(e))

    @app.errorhandler(ChoicesError)
    def choices_broken(e):
        return Response(str(e), 503, mimetype="text/plain")

    @app.post("/api/choice")
    def api_choice():
        """A choice on a pair this server offered; the probe flag is the server's (module docstring)."""
        body = _json_post()
        rater = _rater(body)
        left, right = _str_field(body, "left"), _str_field(body, "right")
        side = body.get("winner")
        if not (side is None or isinstance(side, str)) or side not in ("left", "right", None):
            _bad('winner is "left", "right" or null (skip)')
        picker = taste.picker()
        if picker is None or left not in picker.index or right not in picker.index or left == right:
            _bad("left and right must be two trainable rows of this catalog")
        winner = {"left": left, "right": right, None: None}[side]
        store = taste.store
        with taste.choosing:  # one choice at a time: two identical posts at once store one row
            probe = taste.offered(left, right)
            if probe is None:  # answered already (a repeated post), or never offered
                standing = store.standing_choice(rater, left, right)
                if standing is None:
                    _bad("this pair was not offered by this server (it may have restarted): ask for a new pair", 409)
            else:
                standing = store.add_choice_once(rater, left, right, winner, probe)
                taste.answered(left, right)
                if not standing["repeated"]:
                    return jsonify({"saved": standing["id"], "counts": store.counts()})
        # a repeated post: the same answer is the stored choice, another is a conflict
        if standing["winner"] != winner:
            _bad("this pair already has your choice; undo it (U) to change it", 409)
        return jsonify({"saved": standing["id"], "repeated": True, "counts": store.counts()})

    @app.post("/api/undo")
    def api_undo():
        undone = taste.store.undo(_rater(_json_post()))
        if undone:  # the page shows the pair again: it is on offer again, as the probe it was
            taste.offer(undone)
            undone.update(sizes(undone["left"], undone["right"]))
        return jsonify({"undone": undone, "counts": taste.store.counts()})

    @app.post("/api/stars")
    def api_stars():
        body = _json_post()
        rater, key, stars = _rater(body), _str_field(body, "key"), body.get("stars")
        row = browser.row(key)
        if row is None:
            _bad("no such row")
        if row["status"] != "ok":
            _bad(f"stars are given to trainable rows; this row is {row['status']}")
        if stars is not None and (type(stars) is not int or not 1 <= stars <= 9):
            _bad("stars are an integer 1..9, or null to take them back")
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
        handler = _handler()
        if handler is not None:  # what the app did not read is not read after the answer either
            handler.stop_reading()
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'"
        return resp

    return app


class _Handler(WSGIRequestHandler):
    """Werkzeug's handler with a timeout on every socket read (socketserver applies ``timeout``), and
    itself in the environ, so that a refused body is never drained (``_refuse_unread``)."""

    timeout = READ_TIMEOUT

    def make_environ(self):
        environ = super().make_environ()
        environ["zxl.handler"] = weakref.ref(self)  # not the handler itself: no cycle keeps its socket open
        return environ

    def stop_reading(self) -> None:
        """Nothing more is read from this connection: Werkzeug's drain after the answer reads an empty
        stream, and the socket's reader is closed, so the socket closes as soon as the request ends
        (an open reader kept it, and the client's unsent body, waiting for a garbage collection)."""
        old, self.rfile = self.rfile, io.BytesIO()
        if not isinstance(old, io.BytesIO):
            old.close()


def serve(catalog_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, allow: list[str] | tuple = ()):
    """A threaded server for ``create_app``; returns it (``serve_forever`` / ``shutdown``). Requests
    must name ``host`` (or a loopback name, or one of ``allow``) and the bound port in their Host."""
    from werkzeug.serving import make_server

    app = create_app(catalog_dir, allowed_names(host, allow))
    server = make_server(host, port, app, threaded=True, request_handler=_Handler)
    app.config["PORT"] = server.server_port
    app.config["BROWSER"].overview()  # counted before the first page is asked for, not while it waits
    return server
