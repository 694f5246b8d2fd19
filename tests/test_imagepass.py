"""pipeline/imagepass.py: the image stages of a task share one pass over the shard's images, and
compute exactly what each computes alone."""

import io

import pyarrow.parquet as pq
import pytest

from tests import stage_folder
from zxl.demo_corpus import draw_picture
from zxl.pipeline import graph, imagepass
from zxl.pipeline.stages import stage_path

IMAGE_STAGES = ("inspect", "score", "tag")


def _encoded(picture: int, fmt: str, size=(288, 192), mode="RGB") -> bytes:
    buf = io.BytesIO()
    img = draw_picture(picture, 0, *size).convert(mode)
    img.save(buf, fmt, **({"quality": 90} if fmt != "PNG" else {}))
    return buf.getvalue()


@pytest.fixture
def shard(tmp_path, wd_model):
    """A shard of JPEG, PNG (one with alpha), WebP, a truncated JPEG, one over inspect's pixel limit and
    a failed download; the technical scorer, the metadata and WD taggers."""
    blobs = [
        _encoded(0, "JPEG"), _encoded(1, "PNG"), _encoded(2, "WEBP"), _encoded(3, "PNG", mode="RGBA"),
        _encoded(4, "JPEG")[:3000], _encoded(5, "JPEG", size=(640, 480)), None, _encoded(6, "JPEG", size=(200, 300)),
    ]  # fmt: skip
    cfg, hashes = stage_folder.build(
        tmp_path, blobs, "tag.taggers=[metadata, wd]", f"tag.wd_model={wd_model[0]}", "tag.batch_size=3",
        "inspect.max_image_pixels=200000", "score.batch_size=2",
    )  # fmt: skip
    parts = [(n, hashes[n], tuple(graph.section(cfg, s) for s in graph.BY_NAME[n].sections)) for n in IMAGE_STAGES]
    return tmp_path, parts


def _outputs(run_dir):
    tables = {n: pq.read_table(stage_path(run_dir, n, 0)) for n in IMAGE_STAGES}
    tables["embeddings"] = pq.read_table(run_dir / "embeddings" / "00000.parquet")
    return tables


def _clear(run_dir, names=IMAGE_STAGES):
    for n in names:
        stage_path(run_dir, n, 0).unlink(missing_ok=True)


def test_one_pass_computes_what_each_stage_computes_alone(shard):
    run_dir, parts = shard
    results = graph.run_images(str(run_dir), 0, parts)["parts"]
    assert set(results) == set(IMAGE_STAGES) and not any(r["skipped"] for r in results.values())
    together = _outputs(run_dir)
    inspect = together["inspect"].to_pydict()
    assert inspect["status"] == ["ok", "ok", "ok", "ok", "failed_decode", "failed_decode", "failed_download", "ok"]
    assert "truncated" in inspect["error"][4] and "inspect.max_image_pixels=200000" in inspect["error"][5]
    score = together["score"].to_pydict()
    assert [a is not None for a in score["aesthetic"]] == [s == "ok" for s in inspect["status"]]
    tags = together["tag"].to_pydict()
    assert tags["rating_source"][0] == "metadata" and tags["tags"][0]  # the source's tags first, WD's behind

    _clear(run_dir)
    for name, h, sections in parts:  # each stage in a task of its own, as on a cluster with GPU workers
        assert graph.run_shard(str(run_dir), name, 0, h, *sections)["skipped"] is False
    alone = _outputs(run_dir)
    for name, table in together.items():
        assert table.equals(alone[name]), name

    _clear(run_dir, ("score", "tag"))  # killed after inspect was written: the rerun skips it
    results = graph.run_images(str(run_dir), 0, parts)["parts"]
    assert results["inspect"]["skipped"] and not results["score"]["skipped"]
    resumed = _outputs(run_dir)
    for name, table in together.items():
        assert table.equals(resumed[name]), name
    assert all(r["skipped"] for r in graph.run_images(str(run_dir), 0, parts)["parts"].values())


def test_each_image_is_decoded_once_per_scale_and_never_past_the_gate(shard, monkeypatch):
    run_dir, parts = shard
    jpeg_loads, whole = [], []
    real_load, real_decode = imagepass.load, imagepass.decode_reduced

    def counting_load(im):
        jpeg_loads.append(im.size)
        return real_load(im)

    def counting_decode(data, side, *args):
        whole.append((data[:4], side))
        return real_decode(data, side, *args)

    monkeypatch.setattr(imagepass, "load", counting_load)
    monkeypatch.setattr(imagepass, "decode_reduced", counting_decode)
    graph.run_images(str(run_dir), 0, parts)
    # PNG and WebP: one whole decode each, every view box-reduced from it
    assert sorted(whole) == [(b"RIFF", None), (b"\x89PNG", None), (b"\x89PNG", None)]
    # JPEG: one decode each: inspect's view (448, here the whole image) is the technical scorer's too,
    # and WD's 32 on the long side is box-reduced from it (views under 448 are never decoded apart);
    # the truncated one is tried by inspect alone, the one over the pixel limit never decoded
    assert sorted(jpeg_loads) == [(200, 300), (288, 192), (288, 192)]
