"""pipeline/score.py: the score stage's loop, its outputs, and ``score_blobs`` on bytes."""

import numpy as np
import pyarrow.parquet as pq

from tests import stage_folder
from zxl.images import decode
from zxl.pipeline.score import embeddings_path, read_embeddings, score_blobs
from zxl.pipeline.stages import stage_path
from zxl.scorers.config import ScoreConfig
from zxl.scorers.registry import build_scorer


def test_score_blobs_keeps_order_and_names_what_does_not_decode():
    cfg = ScoreConfig(batch_size=2, loader_threads=2)
    blobs = [stage_folder.picture(1, noise=0), b"not an image", stage_folder.picture(2, noise=90), b""]
    scores, errors, embeddings = score_blobs(build_scorer(cfg), blobs, cfg)
    assert scores[1] is None and scores[3] is None and set(errors) == {1, 3}
    assert errors[1].startswith("scorer technical cannot read the image: UnidentifiedImageError")
    scorer = build_scorer(cfg)  # the loop gives what the scorer gives image by image
    for i in (0, 2):
        direct = scorer.score(scorer.collate([scorer.prepare(decode(blobs[i]))]))[0]
        assert abs(scores[i] - float(direct)) < 1e-6
    from zxl.scorers.pixels import pixel_embedding

    assert sorted(embeddings) == [0, 2]  # the technical scorer stores the weight-free pixel embedding
    for i in (0, 2):
        assert abs(embeddings[i] - pixel_embedding(decode(blobs[i]))).max() < 1e-6
    again, _, _ = score_blobs(build_scorer(cfg), blobs, ScoreConfig(batch_size=3, loader_threads=1))
    assert again == scores  # batching and threads change nothing


def test_score_stage_writes_one_row_per_input(tmp_path):
    blobs = [stage_folder.picture(i, noise=10 * i) for i in range(5)] + [None]
    cfg, hashes = stage_folder.build(tmp_path, blobs)
    stage_folder.run(tmp_path, cfg, hashes, "inspect", "score")
    table = pq.read_table(stage_path(tmp_path, "score", 0)).to_pandas()
    assert table["key"].tolist() == [str(1000 + i) for i in range(6)]
    assert table["status"].tolist() == ["ok"] * 5 + ["failed_download"]
    assert table["aesthetic"].iloc[:5].notna().all() and table["aesthetic"].isna().iloc[5]
    meta = pq.read_schema(stage_path(tmp_path, "score", 0)).metadata
    assert meta[b"zxl.scorer"] == b"technical" and meta[b"zxl.stage_hash"] == hashes["score"].encode()
    keys, vectors = read_embeddings(tmp_path, 1)  # the pixel embedding of every ok image, named as such
    assert keys == table["key"].tolist()[:5] and vectors.shape == (5, 224)
    assert pq.read_schema(embeddings_path(tmp_path, 0)).metadata[b"zxl.embedding"] == b"pixels-v1"
    assert abs(np.linalg.norm(vectors, axis=1) - 1).max() < 1e-2


def test_score_stage_embeds_with_clip(tmp_path, tiny_clip):
    from tests.conftest import clip_cfg

    blobs = [stage_folder.picture(i) for i in range(3)]
    cfg, hashes = stage_folder.build(tmp_path, blobs, "score.scorer=clip-mlp")
    cfg.score = clip_cfg(tiny_clip)
    hashes = stage_folder.graph.stage_hashes(cfg, "test-source")
    stage_folder.run(tmp_path, cfg, hashes, "inspect", "score")
    keys, vectors = read_embeddings(tmp_path, 1)
    assert keys == ["1000", "1001", "1002"] and vectors.shape == (3, 32)


def test_clip_sees_a_reduced_decode_close_to_the_whole_one(tmp_path):
    """The score stage decodes a booru-sized JPEG for a 224 px CLIP at the 448 view (1/2 by DCT
    scaling), box-reduced by 2, not whole: what the model sees moves by under one and a half grey
    levels on average, its embedding barely."""
    import io
    import json

    import open_clip
    import torch

    from zxl.demo_corpus import draw_picture
    from zxl.images import decode_reduced
    from zxl.scorers.config import ScoreConfig
    from zxl.scorers.heads import laion_state_dict
    from zxl.scorers.registry import build_scorer
    from zxl.testing import TINY_CLIP

    config = {**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "image_size": 224, "patch_size": 32}}
    (tmp_path / "zxl-tiny-clip-224.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "zxl-tiny-clip-224.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("zxl-tiny-clip-224", pretrained=None).state_dict(), tmp_path / "clip.pt")
    torch.save(laion_state_dict(dim=config["embed_dim"], seed=1), tmp_path / "head.pth")
    blobs = []
    for p in range(3):
        buf = io.BytesIO()
        draw_picture(p, 0, 1024, 1536).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    run_dir = tmp_path / "run"
    cfg, _ = stage_folder.build(run_dir, blobs, "score.scorer=clip-mlp")
    files = {name: str(tmp_path / name) for name in ("zxl-tiny-clip-224.json", "clip.pt", "head.pth")}
    cfg.score = ScoreConfig(scorer="clip-mlp", clip_model=files["zxl-tiny-clip-224.json"],
                            clip_weights=files["clip.pt"], head_weights=files["head.pth"])  # fmt: skip
    scorer = build_scorer(cfg.score)
    assert scorer.input_side == 224
    hashes = stage_folder.graph.stage_hashes(cfg, "test-source")
    stage_folder.run(run_dir, cfg, hashes, "inspect", "score")
    _, stored = read_embeddings(run_dir, 1)
    reduced = [decode_reduced(b, 224)[0] for b in blobs]
    assert [im.size for im in reduced] == [(256, 384)] * 3  # 1/2 by DCT (the 448 view), then a box of 2
    whole = [decode(b) for b in blobs]
    x_reduced = torch.stack([scorer.prepare(im) for im in reduced])  # 0..1, before CLIP's normalisation
    x_whole = torch.stack([scorer.prepare(im) for im in whole])
    assert (x_reduced - x_whole).abs().mean() < 1 / 255 * 1.5
    e_whole = scorer.embed(scorer.collate([scorer.prepare(im) for im in whole]))
    cos = (stored.astype(np.float32) * e_whole).sum(1)
    assert cos.min() > 0.999, cos
