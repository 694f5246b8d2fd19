"""What a curator reads about a catalog's tags and captions (``zxl catalog stats``, the browser's index).

Over the trainable rows (``status = 'ok' AND repeats > 0``):

- **tags per category** (general, characters, copyrights, artists, meta): the top tags with the rows
  carrying each, the distinct tags and the instances, counted by DuckDB over the catalog (``unnest``);
- **caption token lengths**: every row's tag-soup training caption (``build_caption`` with style
  weights (1, 0, 0), the longest form, in the curate run's layout, ``rating:{}`` and ``year {}``)
  counted in CLIP ViT-L/14 BPE tokens without BOS/EOS, the count kohya compares with
  ``--max_token_length`` 75/150/225 (each 75-token chunk is one pass of the text encoder); at most
  ``TOKEN_SAMPLE`` rows, a seeded sample of larger catalogs;
- **score–year Spearman ρ** over the rows with a score and a year, beside what the curate run recorded
  (the manifest's ``score_year``) and whether the score tags were cut within year (``score_edges.within``).

The tokenizer is SDXL's first one, CLIP ViT-L/14's BPE (49,408 tokens), built offline from the merges
open_clip ships in its package (``bpe_simple_vocab_16e6.txt.gz``), as ``sampler/tokenizer.py`` derives
it — read from the package folder without importing open_clip, which would import torch (~10 s).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence

import numpy as np

from zxl.catalog.schema import TAG_CATEGORIES

TRAINABLE = "status = 'ok' AND repeats > 0"
TOP_PER_CATEGORY = 15
TOKEN_SAMPLE = 20_000
TOKEN_LIMITS = (75, 150, 225)  # kohya's --max_token_length: 75 tokens per text-encoder pass
TOKEN_BIN = 25  # the histogram's bin width: 75, 150 and 225 are bin edges
CAPTION_COLUMNS = ("score", "rating", "year", *TAG_CATEGORIES.values(), "caption")


def tag_counts(con, top: int = TOP_PER_CATEGORY, top_ok: int = 0) -> tuple[dict, list]:
    """({category: {"distinct", "instances", "top": [[tag, rows], ...]}} over the trainable rows,
    and the ``top_ok`` general tags over all ok rows), from one pass over the tag lists of ``con``'s
    ``catalog`` relation; ties go by name. A count is of instances, which is of rows: the tag rules
    merge a tag that a row carries twice (``list_distinct`` here would cost 5× the whole query)."""
    names = list(TAG_CATEGORIES)
    groups = " UNION ALL ".join(  # one aggregate per category: cheaper than one over the union (2×)
        f'(SELECT {i} AS category, tag, count(*) AS ok_rows, sum(trainable) AS rows FROM (SELECT unnest("{col}") '
        f"AS tag, (repeats > 0)::INTEGER AS trainable FROM catalog WHERE status = 'ok' AND \"{col}\" IS NOT NULL) "
        "WHERE tag IS NOT NULL GROUP BY tag)"
        for i, col in enumerate(TAG_CATEGORIES.values())
    )
    cur = con.cursor()  # the temporary table lives with this cursor's connection only
    try:
        cur.execute(f"CREATE TEMP TABLE tag_stats AS {groups}")
        out = {cat: {"distinct": 0, "instances": 0, "top": []} for cat in names}
        for i, distinct, instances in cur.execute(
            "SELECT category, count(*), sum(rows) FROM tag_stats WHERE rows > 0 GROUP BY 1"
        ).fetchall():
            out[names[i]].update(distinct=int(distinct), instances=int(instances))
        for i, tag, n in cur.execute(
            "SELECT category, tag, rows FROM (SELECT *, row_number() OVER (PARTITION BY category "
            "ORDER BY rows DESC, tag) AS r FROM tag_stats WHERE rows > 0) WHERE r <= ? ORDER BY category, r",
            [int(top)],
        ).fetchall():
            out[names[i]]["top"].append([tag, int(n)])
        ok_top = cur.execute(
            "SELECT tag, ok_rows FROM tag_stats WHERE category = ? ORDER BY ok_rows DESC, tag LIMIT ?",
            [names.index("general"), int(top_ok)],
        ).fetchall()
        cur.execute("DROP TABLE tag_stats")
    finally:
        cur.close()
    return out, [[t, int(n)] for t, n in ok_top]


def score_year(con, manifest: dict) -> dict:
    """Spearman ρ of score and year over the trainable rows with both, and the curate run's record.

    ρ with ties averaged, as ``scipy.stats.spearmanr`` gives it (and ``pipeline/calibrate.py``),
    computed from the (score, year) counts: a score has 9 values and a year a few dozen, so the ranks
    come from the counts and the catalog is never loaded row by row. None with under 3 rows or a
    constant side, like the curate run's."""
    cells = con.execute(
        f"SELECT score, year, count(*) FROM catalog WHERE {TRAINABLE} AND score > 0 AND year IS NOT NULL GROUP BY ALL"
    ).fetchall()
    edges = manifest.get("score_edges") or {}
    return {
        "rows": sum(n for *_, n in cells),
        "rho": spearman_from_counts(cells),
        "manifest": manifest.get("score_year"),
        "within": list(edges.get("within") or []),
    }


def spearman_from_counts(cells: Sequence[tuple]) -> float | None:
    """Spearman's ρ (ties averaged) of pairs given as (a, b, how many), rounded to 4 places."""
    if not cells:
        return None
    a = np.array([c[0] for c in cells], np.float64)
    b = np.array([c[1] for c in cells], np.float64)
    w = np.array([c[2] for c in cells], np.float64)
    if w.sum() < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    ra, rb = _mid_ranks(a, w), _mid_ranks(b, w)
    ma, mb = np.average(ra, weights=w), np.average(rb, weights=w)
    cov = np.sum(w * (ra - ma) * (rb - mb))
    return round(float(cov / np.sqrt(np.sum(w * (ra - ma) ** 2) * np.sum(w * (rb - mb) ** 2))), 4)


def _mid_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The average 1-based rank of each value among ``weights`` copies of every value."""
    distinct, inverse = np.unique(values, return_inverse=True)
    per = np.bincount(inverse, weights=weights, minlength=len(distinct))
    below = np.concatenate([[0.0], np.cumsum(per)[:-1]])
    return (below + (per + 1) / 2)[inverse]


@functools.cache
def clip_tokenizer():
    """CLIP ViT-L/14's tokenizer (transformers ``CLIPTokenizer``), from open_clip's bundled merges.

    The vocabulary is open_clip's own construction (``SimpleTokenizer``: the 256 byte symbols, the
    same with ``</w>``, one token per merge, then the two special tokens), named as transformers names
    them, exactly what ``sampler/tokenizer.py`` writes out; nothing is downloaded. Made once per process."""
    import gzip
    import importlib.util
    from pathlib import Path

    from transformers import CLIPTokenizer

    spec = importlib.util.find_spec("open_clip")  # finds the package without importing it (and torch)
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = [Path(f) / "bpe_simple_vocab_16e6.txt.gz" for f in folders]
    found = next((f for f in files if f.is_file()), None)
    if found is None:
        raise FileNotFoundError("open_clip's bpe_simple_vocab_16e6.txt.gz (the CLIP BPE merges) is not installed")
    lines = gzip.decompress(found.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # as open_clip reads them
    symbols = list(_bytes_to_unicode().values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), "<|startoftext|>",
             "<|endoftext|>"]  # fmt: skip
    # (transformers types merges as list[str]; the BPE model underneath takes only (a, b) pairs)
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges, model_max_length=77)  # pyright: ignore[reportArgumentType]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's (and CLIP's) reversible map of the 256 bytes onto printable characters."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def count_tokens(texts: list[str]) -> list[int]:
    """CLIP tokens per text, without BOS/EOS: what kohya sets against --max_token_length."""
    if not texts:
        return []
    ids = clip_tokenizer()(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return [len(i) for i in ids]


def token_lengths(con, manifest: dict, sample: int = TOKEN_SAMPLE, seed: int = 0) -> dict:
    """The CLIP token lengths of the trainable rows' tag-soup captions (module docstring): p50, p95,
    max, the rows over 75, 150 and 225 tokens, and a histogram in bins of ``TOKEN_BIN``. When there
    are more than ``sample`` rows, a seeded sample of ``sample`` of them (by a hash of the key)."""
    from zxl.catalog.captions import build_caption, layout_of

    (total,) = con.execute(f"SELECT count(*) FROM catalog WHERE {TRAINABLE}").fetchall()[0]
    cols = ", ".join(f'"{c}"' for c in CAPTION_COLUMNS)
    if total > sample:
        sql, params = f"SELECT {cols} FROM catalog WHERE {TRAINABLE} ORDER BY hash(key || ?), key LIMIT ?", [
            f"#{seed}", sample]  # fmt: skip
    else:
        sql, params = f"SELECT {cols} FROM catalog WHERE {TRAINABLE} ORDER BY key", []
    rows = con.sql(sql, params=params).to_arrow_table().to_pylist()
    layout, rng = layout_of(manifest), random.Random(seed)
    captions = [build_caption(r, rng, (1, 0, 0), layout=layout) for r in rows]
    n = np.array(count_tokens(captions), np.int64)
    out = {"trainable_rows": int(total), "rows": len(n), "sampled": len(n) < total, "seed": seed, "p50": None,
           "p95": None, "max": None, "over": {str(k): 0 for k in TOKEN_LIMITS}, "histogram": []}  # fmt: skip
    if len(n):
        p50, p95 = (round(float(np.percentile(n, q)), 1) for q in (50, 95))
        out.update(p50=p50, p95=p95, max=int(n.max()), over={str(k): int((n > k).sum()) for k in TOKEN_LIMITS})
        top = max(TOKEN_LIMITS[-1], -(-int(n.max()) // TOKEN_BIN) * TOKEN_BIN)
        counts = np.bincount(np.maximum(n - 1, 0) // TOKEN_BIN, minlength=top // TOKEN_BIN)
        out["histogram"] = [[f"{i * TOKEN_BIN + (1 if i else 0)}–{(i + 1) * TOKEN_BIN}", int(c)]
                            for i, c in enumerate(counts)]  # fmt: skip
    return out


def token_lengths_safe(con, manifest: dict, sample: int = TOKEN_SAMPLE) -> dict:
    """``token_lengths``, or {"error": why} when the tokenizer cannot be made (open_clip's merges or
    transformers missing): the other stats are still worth reading."""
    try:
        clip_tokenizer()
    except (ImportError, OSError) as e:
        return {"error": f"no CLIP tokenizer: {e}"}
    return token_lengths(con, manifest, sample)


def curation(con, manifest: dict, top: int = TOP_PER_CATEGORY, tokens: bool = True) -> dict:
    """Tags per category, score–year ρ and (with ``tokens``) the caption token lengths, as one dict."""
    categories, _ = tag_counts(con, top)
    out = {"tag_categories": categories, "score_year": score_year(con, manifest)}
    if tokens:
        out["token_lengths"] = token_lengths_safe(con, manifest)
    return out


def tag_rules_lines(manifest: dict) -> list[str]:
    """What the tag rules did and the hash mismatches, from a manifest (nothing when it predates them)."""
    lines = []
    rules = manifest.get("tag_rules") or {}
    did = rules.get("rules") or {}
    if rules:
        lines.append(
            f"tag rules: {did.get('aliased', 0)} aliased, {did.get('replaced', 0)} replaced, "
            f"{did.get('excluded', 0)} excluded, {did.get('implied', 0)} implied tags dropped, "
            f"{did.get('merged', 0)} duplicates merged"
        )
        if "rare_tags_dropped" in rules:
            lines.append(
                f"  {rules['rare_tags_dropped']} rare tags dropped (on fewer than {rules.get('min_count', '?')} "
                f"trainable rows), {rules.get('rare_instances_dropped', 0)} instances"
            )
    if "hash_mismatches" in manifest:
        lines.append(f"hash mismatches: {manifest['hash_mismatches']} (failed_download, no image stored)")
    return lines


def score_year_line(sy: dict) -> str:
    """ρ from the catalog, beside the curate run's record and how the score tags were cut."""

    def rho(v) -> str:
        return "n/a" if v is None else f"{v:+.3f}"

    how = f"score tags cut within {'/'.join(sy['within'])}" if sy["within"] else "global score edges"
    line = f"score-year Spearman rho: {rho(sy['rho'])} over {sy['rows']} trainable rows ({how})"
    m = sy.get("manifest") or {}
    if m.get("rows"):
        line += (f"; the curate run recorded {rho(m.get('rho'))} over {m['rows']} kept rows, "
                 f"{rho(m.get('rho_global_edges'))} with global edges")  # fmt: skip
    return line


def token_lines(tl: dict) -> list[str]:
    """The token-length figures as text."""
    if "error" in tl:
        return [f"caption tokens: {tl['error']}"]
    if not tl["rows"]:
        return ["caption tokens: no trainable rows"]
    over = ", ".join(f"{k}: {n}" for k, n in tl["over"].items())
    of = (f"a seeded sample of {tl['rows']} of {tl['trainable_rows']} trainable rows" if tl["sampled"]
          else f"{tl['rows']} trainable rows")  # fmt: skip
    return [
        f"caption tokens (CLIP ViT-L/14 BPE, tag soup, without BOS/EOS; {of}):",
        f"  p50 {tl['p50']:g}  p95 {tl['p95']:g}  max {tl['max']}  rows over {over}",
    ]


def category_lines(categories: dict) -> list[str]:
    """The tags per category as text: distinct and instances, then the top tags with their rows."""
    lines = ["tags per category (trainable rows): distinct, instances; top tags (rows)"]
    for cat, c in categories.items():
        top = ", ".join(f"{t} ({n})" for t, n in c["top"]) or "-"
        lines.append(f"  {cat:<11} {c['distinct']:>7} {c['instances']:>9}  {top}")
    return lines
