"""A simulated rater in place of a person: it asks the browser's rate view for pairs and answers them
through the page's own HTTP API (``/api/pair``, ``/api/choice``), as the page does when you press ←
or →. Its taste is a utility of the image bytes; it picks the left picture with the Bradley–Terry
probability σ((u_left − u_right) / temperature). Used by ``make taste-demo`` (a rater who likes warm
pictures) and ``make ablation`` (one who loves one look)."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np


def rate(catalog: Path, n: int, utility: Callable[[bytes], float], seed: int = 0, temperature: float = 0.02) -> int:
    """Answer up to ``n`` pairs of ``catalog``'s rate view; returns how many were answered."""
    from zxl.catalog.browse import serve

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = serve(catalog, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    rng = np.random.default_rng(seed)
    cache: dict[str, float] = {}

    def u(key: str) -> float:
        if key not in cache:
            with urllib.request.urlopen(f"{base}/image/{urllib.request.quote(key, safe='')}", timeout=30) as r:
                cache[key] = utility(r.read())
        return cache[key]

    answered = 0
    try:
        for _ in range(n):
            with urllib.request.urlopen(f"{base}/api/pair", timeout=30) as r:
                pair = json.loads(r.read())["pair"]
            if pair is None:
                break
            p_left = 1 / (1 + np.exp(-(u(pair["left"]) - u(pair["right"])) / temperature))
            body = {"rater": "simulated", "left": pair["left"], "right": pair["right"],
                    "winner": "left" if rng.random() < p_left else "right"}  # as the page sends it  # fmt: skip
            req = urllib.request.Request(f"{base}/api/choice", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})  # fmt: skip
            urllib.request.urlopen(req, timeout=30).read()
            answered += 1
    finally:
        server.shutdown()
        server.server_close()
    return answered
