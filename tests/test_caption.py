"""pipeline/caption.py: who gets a caption, and what a row the captioner gives nothing to says."""

import pandas as pd
import pyarrow.parquet as pq

from tests import stage_folder
from zxl.pipeline.caption import caption_rows
from zxl.pipeline.stages import stage_path


class _Echo:
    name = "echo"

    def caption(self, images, rows):
        return [" and ".join(t) if t else "  " for t in rows["tags"]]


def test_caption_rows_strips_and_names_empty_answers():
    rows = pd.DataFrame({"tags": [["1girl", "smile"], [], None], "characters": [None, None, None]})
    texts, problems = caption_rows(_Echo(), None, rows)
    assert texts == ["1girl and smile", None, None]
    assert problems == [
        None,
        "captioner echo returned nothing (tags: [])",
        "captioner echo returned nothing (tags: None)",
    ]
    assert caption_rows(_Echo(), None, rows.iloc[:0]) == ([], [])


def test_only_ok_rows_at_or_above_min_score_are_captioned(tmp_path):
    pics = [stage_folder.picture(i, noise=4 * i) for i in range(9)]
    cfg, hashes = stage_folder.build(
        tmp_path, [*pics, None], "caption.captioner=template", "caption.min_score=7", "dedup.phash_distance=-1"
    )
    stage_folder.run(tmp_path, cfg, hashes, "inspect", "score", "tag", "reduce", "tagrules", "caption")
    reduce = pq.read_table(stage_path(tmp_path, "reduce", 0)).to_pandas()
    out = pq.read_table(stage_path(tmp_path, "caption", 0)).to_pandas()
    assert out["key"].tolist() == reduce["key"].tolist()
    wanted = (reduce["status"] == "ok") & (reduce["score"] >= 7)
    assert 2 <= wanted.sum() <= 4  # scores 7, 8 and 9 of nine ok rows
    answered = out["caption"].notna() | out["problem"].fillna("").str.contains("captioner template returned nothing")
    assert answered[wanted].all() and out.loc[wanted, "caption"].notna().any()
    assert out.loc[~wanted, "caption"].isna().all() and out.loc[~wanted, "problem"].isna().all()
