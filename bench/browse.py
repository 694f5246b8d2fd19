"""The catalog browser under a hostile body: a 100 MB JSON POST to ``/api/choice``.

Each server runs in its own process on 127.0.0.1 over a small synthetic catalog; the figure is the
growth of the server's peak RSS (``VmHWM``) from just before the request to just after its answer.
- **ours**: ``zxl catalog browse``'s server (catalog/browse.py ``serve``): 413 from the
  Content-Length before the body is read.
- **baseline**: the same server without the bound, reading the body as Flask's ``get_json`` does
  (what main did before the bound: the body was read and parsed whole).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY_MB = 100

SERVER = r"""
import sys, threading
from pathlib import Path
from zxl.catalog import browse
unbounded = sys.argv[2] == "baseline"
if unbounded:  # the bound off, the body read as Flask reads it
    real = browse.create_app
    def create_app(*a, **k):
        app = real(*a, **k)
        app.config["MAX_CONTENT_LENGTH"] = None
        from flask import request, jsonify
        app.view_functions["api_choice"] = lambda: jsonify(ok=isinstance(request.get_json(silent=True), dict))
        return app
    browse.create_app = create_app
server = browse.serve(Path(sys.argv[1]), "127.0.0.1", 0)
print(server.server_port, flush=True)
server.serve_forever()
"""


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _one(catalog: Path, which: str, mb: int) -> tuple[float, int]:
    """(peak RSS growth in MB, HTTP status) of one server under one ``mb`` MB body."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(catalog), which], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("GET", "/api/pair")
        conn.getresponse().read()
        conn.request("POST", "/api/choice", b'{"rater": "warm-up"}', {"Content-Type": "application/json"})
        conn.getresponse().read()  # a small bad choice: every code path warmed before the measurement
        before = _hwm_kb(proc.pid)
        body = b'{"rater": "' + b"x" * (mb * 1024 * 1024) + b'"}'
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.putrequest("POST", "/api/choice")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            for a in range(0, len(body), 1 << 20):
                conn.sock.sendall(body[a : a + (1 << 20)])
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed without reading it: that is the point
        status = conn.getresponse().status
        time.sleep(0.2)
        return (_hwm_kb(proc.pid) - before) / 1024, status
    finally:
        proc.terminate()
        proc.wait(10)


def hostile_body(quick: bool = False) -> dict:
    from bench.catalog import synthetic_catalog

    mb = 20 if quick else BODY_MB
    with tempfile.TemporaryDirectory() as tmp:
        catalog = synthetic_catalog(Path(tmp) / "run" / "catalog", 2_000)
        ours, ours_status = _one(catalog, "ours", mb)
        theirs, theirs_status = _one(catalog, "baseline", mb)
    print(json.dumps({"ours_mb": ours, "ours_status": ours_status, "baseline_mb": theirs,
                      "baseline_status": theirs_status}))  # fmt: skip
    return {
        "name": f"browser: server peak RSS growth under one {mb} MB JSON body (ours answers {ours_status}, "
        f"the unbounded server {theirs_status})",
        "ours": ours,
        "baseline": theirs,
        "baseline_name": "the same server reading the body whole (Flask get_json, no bound)",
        "unit": "MB",
        "ratio": ours / theirs if theirs else float("nan"),
        "target": "< 5 MB: the body is never read",
    }
