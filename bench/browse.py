"""The catalog browser under a hostile body: a 100 MB JSON POST to ``/api/choice``.

Each server runs in its own process on 127.0.0.1 over a small synthetic catalog; the figure is the
growth of the server's peak RSS (``VmHWM``) from just before the request to just after its answer.
- **ours**: ``zxl catalog browse``'s server (catalog/browse.py ``serve``): 413 from the
  Content-Length before the body is read.
- **baseline**: a Flask app on Werkzeug's threaded server whose view calls ``get_json`` (what the
  browser did before the bound: the body was read and parsed whole).
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
import sys
from pathlib import Path
if sys.argv[2] == "baseline":  # what main did before the bound: Flask reads and parses the body whole
    from flask import Flask, jsonify, request
    from werkzeug.serving import make_server
    app = Flask("baseline")
    app.add_url_rule("/api/choice", "choice", lambda: jsonify(ok=isinstance(request.get_json(silent=True), dict)),
                     methods=["POST"])
    app.add_url_rule("/api/pair", "pair", lambda: jsonify(pair=None))
    server = make_server("127.0.0.1", 0, app, threaded=True)
else:
    from zxl.catalog import browse
    server = browse.serve(Path(sys.argv[1]), "127.0.0.1", 0)
print(server.server_port, flush=True)
server.serve_forever()
"""


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _one(catalog: Path, which: str, mb: int) -> tuple[float, int, float]:
    """(peak RSS growth in MB, HTTP status, peak RSS in MB) of one server under one ``mb`` MB body."""
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
        peak = _hwm_kb(proc.pid)
        return (peak - before) / 1024, status, peak / 1024
    finally:
        proc.terminate()
        proc.wait(10)


def hostile_body(quick: bool = False) -> dict:
    from bench.catalog import synthetic_catalog

    mb = 20 if quick else BODY_MB
    with tempfile.TemporaryDirectory() as tmp:
        catalog = synthetic_catalog(Path(tmp) / "run" / "catalog", 2_000)
        ours, ours_status, ours_peak = _one(catalog, "ours", mb)
        theirs, theirs_status, theirs_peak = _one(catalog, "baseline", mb)
    print(json.dumps({"ours_growth_mb": ours, "ours_status": ours_status, "ours_peak_rss_mb": ours_peak,
                      "baseline_growth_mb": theirs, "baseline_status": theirs_status,
                      "baseline_peak_rss_mb": theirs_peak}))  # fmt: skip
    return {
        "name": f"browser: server peak RSS growth under one {mb} MB JSON body (ours answers {ours_status}, "
        f"the unbounded server {theirs_status})",
        "ours": ours,
        "baseline": theirs,
        "baseline_name": "Flask on Werkzeug reading the body whole (get_json, no bound)",
        "unit": "MB",
        "ratio": ours / theirs if theirs else float("nan"),
        "target": "< 5 MB: the body is never read",
    }
