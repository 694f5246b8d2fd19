"""catalog/browse.py under hostile requests: Host allow-list (DNS rebinding), bounded and timed bodies,
validated fields, server-side probe flags, idempotent choices, and a damaged choice database."""

import http.client
import json
import select
import shutil
import socket
import sqlite3
import threading
import time

import pyarrow.parquet as pq
import pytest

from zxl.catalog import browse
from zxl.catalog.choices import ChoicesError, ChoiceStore


@pytest.fixture(scope="module")
def served(sync_run, tmp_path_factory):
    """The demo run's catalog served on a free port; its own taste/ folder."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    shutil.copytree(sync_run[1].run_dir / "catalog", run / "catalog")
    (run / "shards").symlink_to(sync_run[1].run_dir / "shards")
    (run / "embeddings").symlink_to(sync_run[1].run_dir / "embeddings")
    server = browse.serve(run / "catalog", "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port, run
    server.shutdown()


def request(port, method, path, body=None, headers=None, host=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.putrequest(method, path, skip_host=True)
    conn.putheader("Host", host or f"127.0.0.1:{port}")
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(data)))
    conn.endheaders(data or None)
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


def pair(port):
    status, body = request(port, "GET", "/api/pair")
    assert status == 200
    return json.loads(body)["pair"]


def rows_in(run) -> int:
    db = run / "taste" / "choices.sqlite"
    return sqlite3.connect(db).execute("SELECT count(*) FROM choices").fetchone()[0] if db.exists() else 0


def test_dns_rebinding_and_foreign_hosts_are_refused_before_anything_happens(served):
    port, run = served
    p = pair(port)
    before = rows_in(run)
    choice = {"rater": "eve", "left": p["left"], "right": p["right"], "winner": "left"}
    evil = f"evil.example:{port}"  # a page whose name now resolves to 127.0.0.1: its Origin matches its Host
    asks = [("POST", "/api/choice", choice), ("GET", "/", None), ("GET", "/api/pair", None),
            ("GET", f"/image/{p['left']}", None), ("POST", "/api/undo", {"rater": "ann"})]  # fmt: skip
    for method, path, body in asks:
        status, text = request(port, method, path, body, {"Origin": f"http://{evil}"}, host=evil)
        assert status == 421 and b"--allow-host" in text, path
    for host in (f"127.0.0.1:{port + 1}", f"localhost:{port + 1}", "127.0.0.1", f"127.0.0.2:{port}",
                 f"127.0.0.1.nip.io:{port}", "[::1]x", f"user@127.0.0.1:{port}"):  # fmt: skip
        assert request(port, "GET", "/", host=host)[0] in (400, 421), host
    assert rows_in(run) == before
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        assert request(port, "GET", "/", host=host)[0] == 200, host


def test_allowed_names_and_the_host_header():
    assert browse.split_host("[::1]:8765") == ("::1", 8765) and browse.split_host("LocalHost") == ("localhost", None)
    for bad in ("a:b:c", "[::1", "host:port", ":80", ""):
        with pytest.raises(ValueError):
            browse.split_host(bad)
    assert browse.allowed_names("0.0.0.0") == {"127.0.0.1", "localhost", "::1"}  # a wildcard is no name
    assert browse.allowed_names("192.168.1.5", ["Box.lan"]) >= {"192.168.1.5", "box.lan", "localhost"}
    assert "fe80::1" in browse.allowed_names("::1", ["fe80::1"])
    for with_port in ("box.lan:8765", "[::1]:80"):  # it would never match: said at once, not a silent 421
        with pytest.raises(ValueError, match="give the name alone"):
            browse.allowed_names("127.0.0.1", [with_port])


def test_a_100_mb_body_is_refused_from_its_length_without_being_read(served):
    port, run = served
    before = rows_in(run)
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    body_mb = 100
    sock.sendall(f"POST /api/choice HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {body_mb << 20}\r\n\r\n".encode())  # fmt: skip
    sent = 0
    try:
        for _ in range(body_mb):
            sock.sendall(b"[" * (1 << 20))
            sent += 1
    except OSError:  # the server answered and stopped reading: the rest is refused by the socket
        pass
    reply = sock.recv(4096)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413") and sent < body_mb
    assert request(port, "POST", "/api/choice", b"x" * (browse.MAX_BODY + 1))[0] == 413
    # 100 GiB announced, nothing sent: answered at once, the thread freed
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(f"POST /api/stars HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {100 << 30}\r\n\r\n".encode())  # fmt: skip
    sock.settimeout(5)  # the whole answer, then the end of the connection: closed at once, not at a GC
    reply, closed = b"", False
    try:
        while chunk := sock.recv(4096):
            reply += chunk
        closed = True
    except ConnectionResetError:
        closed = True
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413") and closed
    assert rows_in(run) == before


def test_a_body_that_trickles_in_is_cut_at_the_deadline(served, monkeypatch):
    port, _ = served
    monkeypatch.setattr(browse, "BODY_DEADLINE", 1.0)
    monkeypatch.setattr(browse._Handler, "timeout", 0.8)  # each read alone would wait for ever at a byte per 0.5 s
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(f"POST /api/choice HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: 100\r\n\r\n".encode())  # fmt: skip
    t0 = time.monotonic()
    reply = b""
    while not reply and time.monotonic() - t0 < 10:  # a byte every 0.3 s until the server answers
        if select.select([sock], [], [], 0.3)[0]:
            reply = sock.recv(4096)
        else:
            sock.sendall(b" ")
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 4


def test_a_chunked_body_is_refused(served):
    port, _ = served
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(f"POST /api/choice HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".encode())  # fmt: skip
    assert sock.recv(4096).startswith(b"HTTP/1.1 411")
    sock.close()


def test_a_body_that_stops_coming_times_out(served, monkeypatch):
    port, _ = served
    monkeypatch.setattr(browse._Handler, "timeout", 0.5)  # socketserver applies it to each new connection
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(f"POST /api/choice HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: 100\r\n\r\n{{\"rater\"".encode())  # fmt: skip
    t0 = time.monotonic()
    reply = sock.recv(4096)
    waited = time.monotonic() - t0
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408") and waited < 10


def test_malformed_bodies_and_fields_get_400_with_the_reason(served):
    port, run = served
    p = pair(port)
    before = rows_in(run)
    ok = {"rater": "eve", "left": p["left"], "right": p["right"], "winner": "left"}
    cases = {
        b"[" * 60_000: b"nests deeper",
        b"{" * 2_000: b"nests deeper",
        b'{"rater": "eve", ': b"not JSON",
        b"\xff\xfe{}": b"not UTF-8",
        b"[1, 2]": b"not an object",
        json.dumps({**ok, "left": [p["left"]]}).encode(): b"left must be a string",
        json.dumps({**ok, "right": {"k": 1}}).encode(): b"right must be a string",
        json.dumps({**ok, "winner": 1}).encode(): b"winner is",
        json.dumps({**ok, "winner": ["left"]}).encode(): b"winner is",
        json.dumps({**ok, "rater": ["eve"]}).encode(): b"rater must be a string",
        json.dumps({**ok, "left": p["right"]}).encode(): b"two trainable rows",
        b'{"rater": "\\ud800", "left": "a", "right": "b", "winner": "left"}': b"lone surrogate",
    }
    for body, reason in cases.items():
        status, text = request(port, "POST", "/api/choice", body)
        assert status == 400 and reason in text, (body[:40], text)
    assert request(port, "POST", "/api/stars", b'{"rater": "eve", "key": 5, "stars": 3}')[0] == 400
    assert request(port, "POST", "/api/stars", b'{"rater": "eve", "key": "\\udfff", "stars": 3}')[0] == 400
    assert request(port, "POST", "/api/undo", b'{"rater": "\\ud800"}')[0] == 400
    assert request(port, "POST", "/api/choice", b"[" * 100_000)[0] == 413  # past the bound before any parsing
    assert rows_in(run) == before


def test_the_server_alone_sets_the_probe_flag_and_a_repeat_is_idempotent(served):
    port, run = served
    seen = {True: 0, False: 0}
    for _ in range(12):  # every tenth pair offered is a probe
        p = pair(port)
        claim = "no" if p["probe"] else True  # the client claims the opposite (and "no" is truthy)
        body = {"rater": "mallory", "left": p["left"], "right": p["right"], "winner": "left", "probe": claim}
        status, text = request(port, "POST", "/api/choice", body)
        assert status == 200, text
        saved = json.loads(text)["saved"]
        con = sqlite3.connect(run / "taste" / "choices.sqlite")
        assert con.execute("SELECT probe FROM choices WHERE id = ?", (saved,)).fetchone()[0] == int(p["probe"])
        seen[p["probe"]] += 1
        # the same post again: the same choice, no new row; another answer: 409
        n = rows_in(run)
        status, again = request(port, "POST", "/api/choice", body)
        assert status == 200 and json.loads(again)["saved"] == saved and rows_in(run) == n
        assert request(port, "POST", "/api/choice", {**body, "winner": "right"})[0] == 409
    assert seen[True] >= 1 and seen[False] >= 1
    # twenty identical posts at once: one row
    p = pair(port)
    body = {"rater": "mallory", "left": p["left"], "right": p["right"], "winner": "right"}
    n = rows_in(run)
    start = threading.Barrier(20)
    answers = []

    def post():
        start.wait()
        answers.append(request(port, "POST", "/api/choice", body))

    threads = [threading.Thread(target=post) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a[0] for a in answers] == [200] * 20 and len({json.loads(a[1])["saved"] for a in answers}) == 1
    assert rows_in(run) == n + 1
    # undo, then the changed answer is taken (the pair is offered again, as the probe it was)
    status, undone = request(port, "POST", "/api/undo", {"rater": "mallory"})
    last = json.loads(undone)["undone"]
    status, text = request(port, "POST", "/api/choice", {"rater": "mallory", "left": last["left"],
                                                         "right": last["right"], "winner": "right"})  # fmt: skip
    assert status == 200
    # a pair this server never offered (trainable rows both, but not asked): 409, nothing stored
    con = sqlite3.connect(run / "taste" / "choices.sqlite")
    asked = {frozenset(r) for r in con.execute("SELECT left_key, right_key FROM choices")}
    first = pq.read_table(sorted((run / "catalog").glob("part-*.parquet"))[0], columns=["key", "status"]).to_pylist()
    trainable = [r["key"] for r in first if r["status"] == "ok"]
    a, b = next((a, b) for a in trainable for b in trainable if a != b and frozenset((a, b)) not in asked)
    n = rows_in(run)
    status, text = request(port, "POST", "/api/choice", {"rater": "mallory", "left": a, "right": b, "winner": "left"})
    assert status in (400, 409) and rows_in(run) == n


def test_stars_are_what_the_page_sends_on_the_rows_it_offers_them(served):
    port, run = served
    rows = pq.read_table(sorted((run / "catalog").glob("part-*.parquet"))[0], columns=["key", "status"]).to_pylist()
    ok = next(r["key"] for r in rows if r["status"] == "ok")
    hidden = next(r["key"] for r in rows if r["status"] != "ok")
    for stars in (True, False, 0, 10, "5", 5.0, [5]):
        status, text = request(port, "POST", "/api/stars", {"rater": "eve", "key": ok, "stars": stars})
        assert status == 400 and b"integer 1..9" in text, stars
    status, text = request(port, "POST", "/api/stars", {"rater": "eve", "key": hidden, "stars": 5})
    assert status == 400 and b"trainable rows" in text
    status, text = request(port, "POST", "/api/stars", {"rater": "eve", "key": ok, "stars": 5})
    assert status == 200 and json.loads(text)["stars"]["eve"] == 5


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_a_damaged_choice_database_leaves_browsing_working(sync_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(sync_run[1].run_dir / "catalog", run / "catalog")
    (run / "shards").symlink_to(sync_run[1].run_dir / "shards")
    db = run / "taste" / "choices.sqlite"
    db.parent.mkdir()
    if damage == "garbage":
        db.write_bytes(b"this is not a database\n" * 500)
    else:
        store = ChoiceStore(db)
        for i in range(300):
            store.add_choice("ann", f"a{i}", f"b{i}", f"a{i}")
        store.close()
        if damage == "truncated":
            with open(db, "r+b") as f:
                f.truncate(db.stat().st_size // 2)
        else:  # another program's file with a table of the same name
            db.unlink()
            sqlite3.connect(db).executescript("CREATE TABLE choices (id INTEGER, what TEXT); INSERT INTO choices "
                                              "VALUES (1, 'x');")  # fmt: skip
    before = db.read_bytes()
    with pytest.raises(ChoicesError, match=str(db).replace("/", ".")):
        ChoiceStore(db).counts()
    assert db.read_bytes() == before  # refused unchanged (no tables made, no column added)
    client = browse.create_app(run / "catalog").test_client()
    rows = pq.read_table(sorted((run / "catalog").glob("part-*.parquet"))[0], columns=["key", "status"]).to_pylist()
    ok = next(r["key"] for r in rows if r["status"] == "ok")
    page = client.get(f"/row/{ok}")
    assert page.status_code == 200 and b"stars unavailable" in page.data and str(db).encode() in page.data
    assert client.get("/").status_code == 200 and client.get("/clusters").status_code == 200
    rate = client.get("/rate")
    assert rate.status_code == 503 and b"cannot keep choices" in rate.data and str(db).encode() in rate.data
    assert client.get("/api/pair").status_code == 503
    assert client.post("/api/undo", json={"rater": "ann"}).status_code == 503
