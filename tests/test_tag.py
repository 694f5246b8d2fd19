"""The tag stage's own pieces: the EXIF year fallback and the problem counting."""

import json

import numpy as np
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


def test_image_taggers_get_images_decoded_to_their_input_side(tmp_path, wd_model):
    """The tag stage decodes each stored image once, reduced to the largest input side of the image
    taggers (the tiny WD model's 32 px on the long side, as it pads to a square); what the model makes of
    them is within 0.02 of what it makes of the whole images."""
    import io

    import pandas as pd

    from tests import stage_folder
    from zxl.demo_corpus import draw_picture
    from zxl.images import decode, decode_reduced
    from zxl.pipeline.stages import stage_path
    from zxl.pipeline.tag import tag_rows
    from zxl.taggers.config import TagConfig
    from zxl.taggers.wd import WDTagger, batch

    sides = []
    rows = pd.DataFrame({"key": ["a"]})
    tag_rows(TagConfig(taggers=["wd"], wd_model=str(wd_model[0])), rows, lambda s: sides.append(s) or [None])
    tag_rows(TagConfig(taggers=["metadata"]), rows, lambda s: sides.append(s) or [None])
    assert sides == [32]  # asked once, at the model's side; never for the metadata tagger alone

    blobs = []
    for p in range(4):
        buf = io.BytesIO()
        draw_picture(p, 0, 512, 768).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    cfg, hashes = stage_folder.build(tmp_path, blobs, "tag.taggers=[wd]", f"tag.wd_model={wd_model[0]}",
                                     "tag.wd_general_threshold=0.5", "tag.wd_character_threshold=0.5")  # fmt: skip
    stage_folder.run(tmp_path, cfg, hashes, "inspect", "tag")
    stored = pq.read_table(stage_path(tmp_path, "tag", 0)).to_pandas()
    tagger = WDTagger(cfg.tag)
    reduced = [decode_reduced(b, 32, long=True)[0] for b in blobs]  # the 448 view (512×768, whole), then a box of 24
    assert [im.size for im in reduced] == [(22, 32)] * 4
    by_hand = tagger.tag(reduced, pd.DataFrame({"key": stored["key"]}))
    assert stored["tags"].map(list).tolist() == by_hand["tags"].map(list).tolist()
    assert stored["rating"].tolist() == by_hand["rating"].tolist()
    # what the model makes of them: within 0.02 of its probabilities for the whole images
    gap = tagger.predict(batch(reduced, 32)) - tagger.predict(batch([decode(b) for b in blobs], 32))
    assert np.abs(gap).max() < 0.02, np.abs(gap).max()
