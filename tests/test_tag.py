"""The tag stage's own pieces: the EXIF year fallback and the problem counting."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from zxl.pipeline.tag import exif_year_of, exif_years, problem_kind


def test_exif_year_of_an_image(tmp_path):
    img = Image.new("RGB", (8, 8))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2013:07:04 10:00:00"  # DateTimeOriginal
    img.save(tmp_path / "a.jpg", exif=exif)
    with Image.open(tmp_path / "a.jpg") as im:
        assert exif_year_of(im) == 2013
    img.save(tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as im:
        assert exif_year_of(im) is None


def test_exif_years_from_img2dataset_parquet(tmp_path):
    (tmp_path / "shards").mkdir()
    exif = [json.dumps({"EXIF DateTimeOriginal": "2009:12:31 23:59:59"}), json.dumps({"Image DateTime": "2015:01:02"}),
            None, "not json", json.dumps({"EXIF DateTimeOriginal": "0000:00:00 00:00:00"})]  # fmt: skip
    pq.write_table(
        pa.table({"zxl_key": ["a", "b", "c", "d", "e"], "exif": exif}), tmp_path / "shards" / "00003.parquet"
    )
    assert exif_years(tmp_path, 3) == {"a": 2009, "b": 2015}
    assert exif_years(tmp_path, 4) == {}  # no such shard file: no years, no error


def test_problem_kinds_group_values():
    a = problem_kind("metadata: rating: unknown rating 'unrated'")
    b = problem_kind("metadata: rating: unknown rating 'nope'")
    assert a == b == "metadata: rating: unknown rating …"
