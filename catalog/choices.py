"""What the user tells zxl about their taste: choices between two images and 1–9 stars, kept in SQLite
(``runs/<name>/taste/choices.sqlite``), and which pair to show next.

The database is the record: every choice is one transaction (WAL journal, ``synchronous=FULL``), so
a choice the page saw acknowledged survives the server being killed the next instant, and a write
cut short leaves the database as it was before it. Nothing is deleted: an undo marks the rater's
latest choice ``undone``; a skip is a choice with no winner (that pair is not shown again).

``PairPicker`` chooses the next pair actively (zxl/preference.py): the Bradley–Terry head refitted on
the choices so far, the anchor image drawn from each score level in turn (so the choices spread over
the whole score range), its partner the candidate within two score levels whose outcome the head is
least sure of — except every tenth pair, a random candidate (a ``probe``): accuracy on hard pairs
says little about the head, accuracy on the probes is what ``zxl taste fit`` reports beside it.
Never the same pair twice, never two images that are near copies (cosine ≥ 0.95 of their
embeddings), never a row that is not trained on (duplicates are not ``ok``).

A database that is not SQLite, is damaged or truncated, or holds another program's ``choices``
table is a ``ChoicesError`` naming the file and what is wrong (``zxl taste fit`` says it in one
line; the browser keeps browsing). ``standing_choice`` is what makes a repeated post idempotent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import threading
from pathlib import Path

import numpy as np

from zxl import preference
from zxl.config import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS choices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,              -- UTC, ISO 8601
    rater TEXT NOT NULL,
    left_key TEXT NOT NULL,
    right_key TEXT NOT NULL,
    winner TEXT,                     -- left_key or right_key; NULL = skipped
    undone INTEGER NOT NULL DEFAULT 0,
    probe INTEGER NOT NULL DEFAULT 0,  -- 1: a random pair (not chosen by the head), for an unbiased accuracy
    CHECK (winner IS NULL OR winner = left_key OR winner = right_key)
);
CREATE TABLE IF NOT EXISTS stars (
    key TEXT NOT NULL,
    rater TEXT NOT NULL,
    stars INTEGER NOT NULL CHECK (stars BETWEEN 1 AND 9),
    time TEXT NOT NULL,
    PRIMARY KEY (key, rater)
);
"""
NEAR_COPY = 0.95
CANDIDATES = 256
PROBE_EVERY = 10  # every tenth pair is random: its answers measure the head without the active choice's bias
MIN_TO_FIT = 6  # choices before the head is refitted at all (until then: every pair equally unsure)
C = 10.0
STAR_WEIGHT = 0.5  # an implied pair from stars counts half a choice


COLUMNS = {
    "choices": {"id", "time", "rater", "left_key", "right_key", "winner", "undone", "probe"},
    "stars": {"key", "rater", "stars", "time"},
}


class ChoicesError(ConfigError):
    """The choice database cannot be used: the message names the file and why."""


def choices_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "taste" / "choices.sqlite"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def clean_rater(name: str) -> str:
    name = " ".join(str(name or "").split())[:64]
    if not name:
        raise ValueError("a rater name is needed (who made these choices)")
    return name


class ChoiceStore:
    """The SQLite record of choices and stars; safe to share between the server's threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._check_readonly()  # another program's file, or a damaged one, is refused before it is changed
        con = None
        try:
            con = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.executescript(SCHEMA)
            columns = {row[1] for row in con.execute("PRAGMA table_info(choices)")}
            if "probe" not in columns:  # a database from before probe pairs
                con.execute("ALTER TABLE choices ADD COLUMN probe INTEGER NOT NULL DEFAULT 0")
        except sqlite3.Error as e:
            if con is not None:
                con.close()
            raise ChoicesError(f"{self.path}: {self._what(e)}") from None
        self._con = con
        self._lock = threading.Lock()

    def _check_readonly(self) -> None:
        """Read the existing file without writing to it: SQLite, whole, and its tables zxl's (a
        ``choices`` table from before probe pairs gains that column once this check passes)."""
        try:
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error as e:
            raise ChoicesError(f"{self.path}: {self._what(e)}") from None
        try:
            (check,) = con.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            for table, need in COLUMNS.items():
                have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
                if have and not need - {"probe"} <= have:
                    raise ChoicesError(
                        f"{self.path}: its table {table} is not zxl's (it lacks {sorted(need - have)}); "
                        "move the file aside to start a new record"
                    )
        except sqlite3.Error as e:
            raise ChoicesError(f"{self.path}: {self._what(e)}") from None
        finally:
            con.close()

    @staticmethod
    def _what(e: sqlite3.Error) -> str:
        if isinstance(e, sqlite3.OperationalError):  # locked, read-only, no space, ...
            return f"cannot be used ({e})"
        return f"not a readable choice database ({e}); move it aside to start a new record"

    def close(self) -> None:
        self._con.close()

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction, serialised between the server's threads: committed when the block
        ends, rolled back when it raises; a database error is a ChoicesError naming the file."""
        with self._lock:
            try:
                self._con.execute("BEGIN IMMEDIATE")
                try:
                    yield self._con
                    self._con.execute("COMMIT")
                except BaseException:
                    self._con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise ChoicesError(f"{self.path}: {self._what(e)}") from None

    def _write(self, sql: str, params: tuple) -> int:
        with self._transaction() as con:
            rowid = con.execute(sql, params).lastrowid
            assert rowid is not None  # sqlite3 sets it on every execute (0 when nothing was inserted)
            return rowid

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._con.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise ChoicesError(f"{self.path}: {self._what(e)}") from None

    STANDING = (
        "SELECT id, winner FROM choices WHERE rater = ? AND undone = 0 AND "
        "((left_key = ? AND right_key = ?) OR (left_key = ? AND right_key = ?)) ORDER BY id DESC LIMIT 1"
    )

    def add_choice_once(self, rater: str, left: str, right: str, winner: str | None, probe: bool) -> dict:
        """``add_choice`` unless the rater's choice on this pair stands: checked and written in one
        transaction. Returns {"id", "winner", "repeated"} (the standing choice when repeated)."""
        if winner is not None and winner not in (left, right):
            raise ValueError("the winner must be the left or the right image")
        rater = clean_rater(rater)
        with self._transaction() as con:
            row = con.execute(self.STANDING, (rater, left, right, right, left)).fetchone()
            if row is not None:
                return {"id": row[0], "winner": row[1], "repeated": True}
            cur = con.execute(
                "INSERT INTO choices (time, rater, left_key, right_key, winner, probe) VALUES (?, ?, ?, ?, ?, ?)",
                (_now(), rater, left, right, winner, int(bool(probe))),
            )
            return {"id": cur.lastrowid, "winner": winner, "repeated": False}

    def standing_choice(self, rater: str, left: str, right: str) -> dict | None:
        """The rater's choice on this pair (either side order) that is not undone, or None."""
        rows = self._read(self.STANDING, (clean_rater(rater), left, right, right, left))
        return {"id": rows[0][0], "winner": rows[0][1]} if rows else None

    def add_choice(self, rater: str, left: str, right: str, winner: str | None, probe: bool = False) -> int:
        if winner is not None and winner not in (left, right):
            raise ValueError("the winner must be the left or the right image")
        if left == right:
            raise ValueError("a pair needs two different images")
        return self._write(
            "INSERT INTO choices (time, rater, left_key, right_key, winner, probe) VALUES (?, ?, ?, ?, ?, ?)",
            (_now(), clean_rater(rater), left, right, winner, int(bool(probe))),
        )

    def undo(self, rater: str) -> dict | None:
        """Mark the rater's latest choice (or skip) undone; returns it, or None when there is none."""
        rater = clean_rater(rater)
        with self._transaction() as con:
            row = con.execute(
                "SELECT id, left_key, right_key, winner, probe FROM choices WHERE rater = ? AND undone = 0 "
                "ORDER BY id DESC LIMIT 1",
                (rater,),
            ).fetchone()
            if row:
                con.execute("UPDATE choices SET undone = 1 WHERE id = ?", (row[0],))
        if row is None:
            return None
        return {"id": row[0], "left": row[1], "right": row[2], "winner": row[3], "probe": bool(row[4])}

    def set_stars(self, rater: str, key: str, stars: int | None) -> None:
        """1..9 stars for an image by this rater; None takes them back."""
        rater = clean_rater(rater)
        if stars is None:
            self._write("DELETE FROM stars WHERE key = ? AND rater = ?", (key, rater))
            return
        if not 1 <= int(stars) <= 9:
            raise ValueError("stars are 1..9")
        self._write(
            "INSERT INTO stars (key, rater, stars, time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key, rater) DO UPDATE SET stars = excluded.stars, time = excluded.time",
            (key, rater, int(stars), _now()),
        )

    def choices(self) -> list[tuple[str, str, str, str, bool]]:
        """(winner, loser, rater, time, probe) of every standing choice, oldest first (skips left out)."""
        rows = self._read(
            "SELECT left_key, right_key, winner, rater, time, probe FROM choices WHERE undone = 0 "
            "AND winner IS NOT NULL ORDER BY id"
        )
        return [(w, r if w == left else left, rater, t, bool(p)) for left, r, w, rater, t, p in rows]

    def shown_pairs(self) -> set[frozenset]:
        """Every pair asked about and not undone, skips included."""
        return {frozenset(p) for p in self._read("SELECT left_key, right_key FROM choices WHERE undone = 0")}

    def stars(self) -> list[tuple[str, str, int]]:
        """(key, rater, stars)."""
        return self._read("SELECT key, rater, stars FROM stars ORDER BY key, rater")

    def stars_of(self, key: str) -> dict[str, int]:
        return dict(self._read("SELECT rater, stars FROM stars WHERE key = ?", (key,)))

    def counts(self) -> dict:
        n, skipped, undone, raters = self._read(
            "SELECT count(*) FILTER (WHERE undone = 0 AND winner IS NOT NULL), "
            "count(*) FILTER (WHERE undone = 0 AND winner IS NULL), count(*) FILTER (WHERE undone = 1), "
            "count(DISTINCT rater) FROM choices"
        )[0]
        (starred,) = self._read("SELECT count(*) FROM stars")[0]
        return {"choices": n, "skipped": skipped, "undone": undone, "raters": raters, "stars": starred}


def star_pairs(stars: list[tuple[str, str, int]], index: dict[str, int], seed: int = 0, per_item: int = 20):
    """The pairs stars imply (same rater, more stars wins), at most ``per_item`` per starred image."""
    by_rater: dict[str, list[tuple[int, int]]] = {}
    for key, rater, s in stars:
        if key in index:
            by_rater.setdefault(rater, []).append((index[key], s))
    rng = np.random.default_rng(seed)
    win, lose = [], []
    for items in by_rater.values():
        if len(items) < 2:
            continue
        rows, stars_ = np.array([i for i, _ in items]), np.array([s for _, s in items])
        for a in range(len(items)):
            others = np.flatnonzero(stars_ != stars_[a])
            for b in rng.permutation(others)[:per_item]:
                if stars_[a] > stars_[b]:
                    win.append(rows[a])
                    lose.append(rows[b])
    return preference.Pairs.of(win, lose, np.full(len(win), STAR_WEIGHT))


class PairPicker:
    """The next pair to show (module docstring). ``emb`` float16/32 [N, D] of ``keys``; ``score`` 1..9."""

    def __init__(self, keys: list[str], emb: np.ndarray, score: np.ndarray, store: ChoiceStore, seed: int = 0):
        self.keys = list(keys)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.emb, self.score = emb, np.asarray(score, np.int64)
        self.store = store
        self.rng = np.random.default_rng(seed)
        self.levels = [np.flatnonzero(self.score == s) for s in range(1, 10)]
        self.levels = [lv for lv in self.levels if len(lv)]
        self._fitted_on = -1
        self.w = np.zeros(emb.shape[1])
        self.cov = np.eye(emb.shape[1]) * C
        self._lock = threading.Lock()

    def _pairs(self) -> preference.Pairs:
        found = [(self.index[w], self.index[lo]) for w, lo, *_ in self.store.choices()
                 if w in self.index and lo in self.index]  # fmt: skip
        pairs = preference.Pairs.of([a for a, _ in found], [b for _, b in found])
        extra = star_pairs(self.store.stars(), self.index)
        return preference.Pairs(np.r_[pairs.winner, extra.winner], np.r_[pairs.loser, extra.loser],
                                np.r_[pairs.weight, extra.weight])  # fmt: skip

    def refit(self, force: bool = False) -> None:
        """Refit on the choices so far: after every choice while there are few, then after every tenth
        more (a pair a second stays quick at thousands of choices; the head moves little per choice)."""
        pairs = self._pairs()
        due = len(pairs) - self._fitted_on >= max(1, self._fitted_on // 10) or len(pairs) < self._fitted_on  # undo
        if len(pairs) == self._fitted_on or not (due or force):
            return
        self._fitted_on = len(pairs)
        if len(pairs) >= MIN_TO_FIT:
            x = self.emb
            self.w = preference.fit(x, pairs, C)
            self.cov = preference.posterior_cov(self.w, x, pairs, C)

    def next_pair(self) -> dict | None:
        """{"left", "right", "p"} (sides at random), or None when every pair has been shown."""
        with self._lock:
            self.refit()
            shown = self.store.shown_pairs()
            n_levels = len(self.levels)
            if n_levels == 0 or len(self.keys) < 2:
                return None
            start = len(shown) % n_levels  # each score level in turn
            for attempt in range(4 * n_levels):
                level = self.levels[(start + attempt) % n_levels]
                a = int(level[self.rng.integers(len(level))])
                near = np.flatnonzero(np.abs(self.score - self.score[a]) <= 2)
                cand = self.rng.choice(near, min(CANDIDATES, len(near)), replace=False)
                cand = cand[cand != a]
                cand = np.array([b for b in cand if frozenset((self.keys[a], self.keys[b])) not in shown], np.int64)
                if not len(cand):
                    continue
                xa = np.asarray(self.emb[a], np.float64)
                xb = np.asarray(self.emb[cand], np.float64)
                cos = xb @ xa / np.maximum(np.linalg.norm(xb, axis=1) * np.linalg.norm(xa), 1e-12)
                cand, xb = cand[cos < NEAR_COPY], xb[cos < NEAR_COPY]
                if not len(cand):
                    continue
                p = preference.win_probability(self.w, self.cov, np.broadcast_to(xa, xb.shape), xb)
                probe = len(shown) % PROBE_EVERY == PROBE_EVERY - 1
                at = int(self.rng.integers(len(cand))) if probe else int(np.argmin(np.abs(p - 0.5)))
                b, pb = int(cand[at]), float(p[at])
                if self.rng.random() < 0.5:
                    return {"left": self.keys[a], "right": self.keys[b], "p": pb, "probe": probe}
                return {"left": self.keys[b], "right": self.keys[a], "p": 1 - pb, "probe": probe}
            return None
