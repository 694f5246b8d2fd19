"""catalog/choices.py: the choice database (crash-safe, nothing deleted) and the active pair picker."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from zxl.catalog.choices import ChoiceStore, PairPicker, star_pairs


def test_choices_undo_skip_and_stars(tmp_path):
    store = ChoiceStore(tmp_path / "taste" / "choices.sqlite")
    store.add_choice("ann", "a", "b", "a")
    store.add_choice("ann", "c", "d", None)  # a skip
    store.add_choice("bob", "e", "f", "f")
    assert [c[:3] for c in store.choices()] == [("a", "b", "ann"), ("f", "e", "bob")]
    assert all(c[4] is False for c in store.choices())  # no probes here
    assert store.shown_pairs() == {frozenset("ab"), frozenset("cd"), frozenset("ef")}
    assert store.undo("ann") == {"id": 2, "left": "c", "right": "d", "winner": None, "probe": False}  # a skip
    assert store.undo("ann")["winner"] == "a"
    assert store.undo("ann") is None
    assert store.counts() == {"choices": 1, "skipped": 0, "undone": 2, "raters": 2, "stars": 0}
    store.set_stars("ann", "a", 7)
    store.set_stars("ann", "a", 8)
    store.set_stars("bob", "a", 2)
    assert store.stars_of("a") == {"ann": 8, "bob": 2}
    store.set_stars("bob", "a", None)
    assert store.stars_of("a") == {"ann": 8}
    for bad in (lambda: store.add_choice("ann", "a", "b", "z"), lambda: store.add_choice("ann", "a", "a", "a"),
                lambda: store.add_choice("  ", "a", "b", "a"), lambda: store.set_stars("ann", "a", 10)):  # fmt: skip
        with pytest.raises(ValueError):
            bad()
    store.close()
    again = ChoiceStore(tmp_path / "taste" / "choices.sqlite")  # a restart keeps everything
    assert len(again.choices()) == 1 and again.counts()["undone"] == 2


def test_a_database_from_before_probes_gains_the_column(tmp_path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE choices (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, rater TEXT NOT NULL, "
        "left_key TEXT NOT NULL, right_key TEXT NOT NULL, winner TEXT, undone INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO choices (time, rater, left_key, right_key, winner) VALUES ('t', 'ann', 'a', 'b', 'b');"
    )
    con.commit()
    con.close()
    store = ChoiceStore(db)
    store.add_choice("ann", "c", "d", "c", probe=True)
    assert [(c[0], c[4]) for c in store.choices()] == [("b", False), ("c", True)]


def test_stars_imply_pairs_within_one_rater():
    stars = [("a", "ann", 9), ("b", "ann", 3), ("c", "ann", 3), ("d", "bob", 1)]
    pairs = star_pairs(stars, {"a": 0, "b": 1, "c": 2, "d": 3})
    assert sorted(zip(pairs.winner.tolist(), pairs.loser.tolist(), strict=True)) == [(0, 1), (0, 2)]
    assert (pairs.weight == 0.5).all()


WRITER = textwrap.dedent(
    """
    import sys
    from zxl.catalog.choices import ChoiceStore
    store = ChoiceStore(sys.argv[1])
    i = 0
    while True:
        store.add_choice("ann", f"k{i}", f"k{i + 1}", f"k{i}")
        print(i, flush=True)  # acknowledged: committed
        i += 1
    """
)


def test_nothing_acknowledged_is_lost_when_the_writer_is_killed(tmp_path):
    db = tmp_path / "choices.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    acked = -1
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 150:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-write: it was committing the next one
        proc.wait(timeout=30)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    n = con.execute("SELECT count(*) FROM choices").fetchone()[0]
    con.close()
    assert n >= acked + 1  # every acknowledged choice is there (and at most the one in flight more)
    assert len(ChoiceStore(db).choices()) == n


def test_picker_spreads_over_scores_never_repeats_and_skips_near_copies(tmp_path):
    rng = np.random.default_rng(0)
    n = 90
    emb = rng.normal(size=(n, 16))
    emb[1] = emb[0] + 1e-3  # a near copy of row 0
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    score = np.arange(n) % 9 + 1
    keys = [f"r{i}" for i in range(n)]
    store = ChoiceStore(tmp_path / "c.sqlite")
    picker = PairPicker(keys, emb.astype(np.float16), score, store)
    seen, levels, probes = set(), [], []
    u = emb @ rng.normal(size=16)
    for _ in range(120):
        p = picker.next_pair()
        probes.append(p["probe"])
        pair = frozenset((p["left"], p["right"]))
        assert pair not in seen and pair != frozenset(("r0", "r1"))
        seen.add(pair)
        a, b = keys.index(p["left"]), keys.index(p["right"])
        levels += [score[a], score[b]]
        assert abs(score[a] - score[b]) <= 2
        store.add_choice("ann", p["left"], p["right"], p["left"] if u[a] > u[b] else p["right"], p["probe"])
    assert set(levels) == set(range(1, 10))  # every score level is asked about
    assert [i for i, x in enumerate(probes) if x] == list(range(9, 120, 10))  # every tenth pair is a random probe
    assert sum(c[4] for c in store.choices()) == 12
    picker.refit(force=True)
    assert picker._fitted_on == 120 and np.corrcoef(picker.w, np.linalg.lstsq(emb, u, rcond=None)[0])[0, 1] > 0.5
