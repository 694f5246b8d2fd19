"""zxl catalog stats / query / show on the demo catalog, and the catalog problems they report."""

import json
import shutil

import pytest

from zxl.catalog.query import CatalogError, open_catalog, query, stats
from zxl.cli import main


def test_stats(sync_run, capsys):
    cfg, result = sync_run
    st = stats(open_catalog(result.catalog_dir))
    m = result.manifest
    assert st["rows"] == m["rows"] and st["ok_rows"] == m["ok_rows"]
    assert st["status"] == m["counts"]["status"]
    assert set(st["score"]) <= {str(i) for i in range(1, 10)} and list(st["score"]) == sorted(st["score"])
    assert st["images_per_epoch"] == sum(int(k) * v for k, v in m["counts"]["repeats"].items())
    assert st["caption_coverage"]["captioned"] == m["captioned"]
    assert len(st["top_tags"]) > 0 and st["score_edges"] == m["score_edges"]["edges"]
    assert main(["catalog", "stats", str(result.catalog_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == m["rows"]
    assert main(["catalog", "stats", str(result.catalog_dir)]) == 0
    out = capsys.readouterr().out
    assert "score (ok rows)" in out and "top tags:" in out and "captions:" in out
    assert "tags per category (trainable rows)" in out and "caption tokens (CLIP ViT-L/14 BPE" in out
    assert "score-year Spearman rho:" in out
    cats = st["tag_categories"]
    assert list(cats) == ["general", "characters", "copyrights", "artists", "meta"]
    assert cats["general"]["distinct"] > 0 and len(cats["general"]["top"]) <= 15
    if m.get("score_year"):
        assert st["score_year"]["manifest"] == m["score_year"]


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_query_formats(sync_run, capsys, fmt):
    d = str(sync_run[1].catalog_dir)
    args = ["catalog", "query", d, "--where", "score >= 8", "--columns", "key, score", "--order", "score desc, key",
            "--limit", "3", "--format", fmt]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        rows = json.loads(out)
        assert len(rows) == 3 and all(r["score"] >= 8 for r in rows)
    elif fmt == "csv":
        assert out.splitlines()[0] == '"key","score"' and len(out.splitlines()) == 4
    else:
        assert "score" in out and "key" in out


def test_query_to_parquet_and_bad_sql(sync_run, tmp_path, capsys):
    import pyarrow.parquet as pq

    d = str(sync_run[1].catalog_dir)
    out = tmp_path / "q.parquet"
    assert main(["catalog", "query", d, "--where", "status = 'ok'", "--limit", "0", "--format", "parquet",
                 "--out", str(out)]) == 0  # fmt: skip
    assert pq.read_table(out).num_rows == sync_run[1].manifest["ok_rows"]
    assert main(["catalog", "query", d, "--where", "scor > 3"]) == 2
    assert "does not run" in capsys.readouterr().err


def test_show_writes_the_image(sync_run, tmp_path, capsys):
    d = sync_run[1].catalog_dir
    con, rel = query(open_catalog(d), "status = 'ok'", "key", "key", 1)
    key = rel.fetchall()[0][0]
    assert main(["catalog", "show", str(d), key, "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["key"] == key
    (written,) = list(tmp_path.iterdir())
    assert written.stat().st_size > 0
    assert main(["catalog", "show", str(d), "no-such-key"]) == 1


def test_newer_schema_missing_and_corrupt_parts(sync_run, tmp_path, capsys):
    d = tmp_path / "catalog"
    shutil.copytree(sync_run[1].catalog_dir, d)
    manifest = json.loads((d / "_manifest.json").read_text())
    parts = manifest["parts"]
    (d / parts[0]).unlink()
    (d / parts[1]).write_bytes(b"garbage")
    cat = open_catalog(d)
    assert len(cat.parts) == len(parts) - 2 and len(cat.problems) == 2
    assert "missing" in cat.problems[0] and "cannot be read" in cat.problems[1]
    assert stats(cat)["rows"] > 0  # the rest still answers
    assert main(["catalog", "stats", str(d)]) == 0
    assert "the rest of the catalog is used" in capsys.readouterr().err
    manifest["schema_version"] = 3
    (d / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CatalogError, match="schema v3; this zxl reads v1 and v2: upgrade zxl"):
        open_catalog(d)
    assert main(["catalog", "stats", str(tmp_path)]) == 2
