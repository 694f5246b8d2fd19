"""Contract tests for every scorer, and each member against its reference computation."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from tests.conftest import clip_cfg
from zxl.config import ConfigError
from zxl.demo_corpus import LADDER
from zxl.scorers.config import ScoreConfig
from zxl.scorers.heads import build_head, laion_state_dict
from zxl.scorers.registry import SCORERS, build_scorer, scorer_class
from zxl.scorers.technical import TechnicalScorer, jpeg_quality


def _images():
    rng = np.random.default_rng(0)
    arr = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    return [
        Image.fromarray(arr(64, 96), "RGB"),
        Image.fromarray(arr(80, 40), "RGB").convert("RGBA"),
        Image.fromarray(arr(50, 50), "RGB").convert("L"),
        Image.fromarray(arr(70, 30), "RGB").convert("P"),
        Image.fromarray(arr(40, 90), "RGB").convert("CMYK"),
    ]


@pytest.fixture(params=sorted(SCORERS))
def scorer(request, tiny_clip):
    if request.param == "clip-mlp":
        return build_scorer(clip_cfg(tiny_clip))
    return build_scorer(ScoreConfig(scorer=request.param))


def test_contract(scorer):
    """Every member: finite float32 [N] for every pixel mode, batch-invariant, deterministic."""
    images = _images()
    scores = scorer.score_images(images)
    assert scores.dtype == np.float32 and scores.shape == (len(images),)
    assert np.isfinite(scores).all()
    one_by_one = np.concatenate([scorer.score_images([im]) for im in images])
    np.testing.assert_allclose(one_by_one, scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(scorer.score_images(images), scores)
    assert scorer.score_images([]).shape == (0,)
    both, emb = scorer.score_and_embed(scorer.collate([scorer.prepare(im) for im in images]))
    np.testing.assert_allclose(both, scores, rtol=1e-5, atol=1e-5)
    assert (emb is not None) == scorer.embeds and bool(scorer.embedding_kind) == scorer.embeds
    if scorer.embeds:  # every scorer here stores embeddings: CLIP's, or the technical scorer's pixel ones
        assert emb.shape[0] == len(images)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    if hasattr(scorer, "score_embeddings"):
        np.testing.assert_allclose(scorer.score_embeddings(emb), scores, rtol=1e-5, atol=1e-5)
    assert isinstance(type(scorer).references(scorer.cfg), dict)


def test_registry_names_the_choices():
    with pytest.raises(ConfigError, match="score.scorer must be one of .*technical.*clip-mlp"):
        scorer_class("laion")


def test_technical_ranks_the_demo_ladder(sync_run, truth):
    """On the stored demo images: Spearman of the raw score with the ladder, per picture."""
    from zxl.catalog.schema import read_catalog

    cat = read_catalog(sync_run[1].catalog_dir).to_pandas().merge(truth, on="key")
    cat = cat[cat["aesthetic"].notna() & ~cat["single"].astype(bool)]  # the pictures served as a whole ladder
    level = cat["variant"].map({v: len(LADDER) - i for i, v in enumerate(LADDER)})
    rhos = [spearmanr(level[g.index], g["aesthetic"])[0] for _, g in cat.groupby("picture") if len(g) >= 3]
    assert len(rhos) >= 20
    assert np.mean(rhos) >= 0.9, rhos
    clean_on_top = [g.loc[g["aesthetic"].idxmax(), "variant"] == "clean" for _, g in cat.groupby("picture")]
    assert np.mean(clean_on_top) >= 0.9


def test_jpeg_quality_reads_the_quantization_table(tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for q in (5, 30, 75, 95):
        img.save(tmp_path / "x.jpg", quality=q)
        with Image.open(tmp_path / "x.jpg") as im:
            assert abs(jpeg_quality(im) - q) <= 1
    img.save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        assert jpeg_quality(im) == 100


def test_technical_terms_move_the_right_way():
    from PIL import ImageFilter

    rng = np.random.default_rng(0)
    base = Image.fromarray((rng.random((512, 512, 3)) > 0.5).astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(2))
    s = TechnicalScorer()
    sharp, blurred = s.score_images([base, base.filter(ImageFilter.GaussianBlur(8))])
    assert sharp > blurred
    from zxl.demo_corpus import draw_picture

    big, small = s.score_images([draw_picture(3, 0, 1216, 832), draw_picture(3, 0, 304, 208)])
    assert big > small  # the same drawing, natively at bucket size and at a quarter of it


def test_clip_mlp_equals_the_computation_by_hand(tiny_clip):
    import open_clip

    images = _images()
    got = build_scorer(clip_cfg(tiny_clip)).score_images(images)
    model, _, preprocess = open_clip.create_model_and_transforms("zxl-tiny-clip", pretrained=str(tiny_clip / "clip.pt"))
    x = torch.stack([preprocess(im.convert("RGBA").convert("RGB") if "A" in im.getbands() else im.convert("RGB"))
                     for im in images])  # fmt: skip
    with torch.no_grad():
        e = model.eval().encode_image(x)
        e = e / e.norm(dim=-1, keepdim=True)
        sd = laion_state_dict(dim=32, seed=1)
        for i in (0, 2, 4, 6, 7):  # LAION's head: five Linears, no activations
            e = e @ sd[f"layers.{i}.weight"].T + sd[f"layers.{i}.bias"]
    np.testing.assert_allclose(got, e.squeeze(-1).numpy(), rtol=1e-4, atol=1e-5)
    same = build_scorer(clip_cfg(tiny_clip, head="head.safetensors")).score_images(images)
    np.testing.assert_allclose(same, got, rtol=1e-6)


def test_laion_state_dict_layout_loads():
    sd = laion_state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes == {
        "layers.0.weight": (1024, 768), "layers.0.bias": (1024,), "layers.2.weight": (128, 1024),
        "layers.2.bias": (128,), "layers.4.weight": (64, 128), "layers.4.bias": (64,),
        "layers.6.weight": (16, 64), "layers.6.bias": (16,), "layers.7.weight": (1, 16), "layers.7.bias": (1,),
    }  # fmt: skip
    head = build_head(sd)
    assert [type(m).__name__ for m in head.layers] == ["Linear", "Dropout", "Linear", "Dropout", "Linear",
                                                        "Dropout", "Linear", "Linear"]  # fmt: skip


def test_waifu_v3_layout():
    dims = [768, 2048, 512, 256, 128, 32, 1]
    torch.manual_seed(0)
    sd, i = {}, 0
    for n_in, n_out in zip(dims, dims[1:], strict=False):
        sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"] = torch.randn(n_out, n_in) * 0.05, torch.randn(n_out)
        if n_out not in (32, 1):
            bn = i + 2
            sd[f"layers.{bn}.weight"], sd[f"layers.{bn}.bias"] = torch.rand(n_out) + 0.5, torch.randn(n_out)
            sd[f"layers.{bn}.running_mean"], sd[f"layers.{bn}.running_var"] = torch.randn(n_out), torch.rand(n_out) + 1
            sd[f"layers.{bn}.num_batches_tracked"] = torch.tensor(7)
            i += 4
        else:
            i += 2
    head = build_head({f"model.{k}": v for k, v in sd.items()})  # a prefix from the training wrapper is fine
    kinds = [type(m).__name__ for m in head.layers]
    assert kinds[:4] == ["Linear", "ReLU", "BatchNorm1d", "Dropout"] and kinds[-3:] == ["Linear", "ReLU", "Linear"]
    x = torch.nn.functional.normalize(torch.randn(3, 768), dim=-1)
    h = x
    for j, m in enumerate(head.layers):
        k = f"layers.{j}"
        if isinstance(m, torch.nn.Linear):
            h = h @ sd[f"{k}.weight"].T + sd[f"{k}.bias"]
        elif isinstance(m, torch.nn.BatchNorm1d):
            h = (h - sd[f"{k}.running_mean"]) / torch.sqrt(sd[f"{k}.running_var"] + 1e-5) * sd[f"{k}.weight"]
            h = h + sd[f"{k}.bias"]
        elif isinstance(m, torch.nn.ReLU):
            h = h.clamp_min(0)
    with torch.no_grad():
        torch.testing.assert_close(head(x), h, rtol=1e-4, atol=1e-4)


def test_missing_and_mismatched_weights_say_what_to_do(tiny_clip, tmp_path):
    with pytest.raises(ConfigError) as e:
        build_scorer(clip_cfg(tiny_clip, head="nope.pth"))
    msg = str(e.value)
    assert "score.head_weights" in msg and str((tiny_clip / "nope.pth").resolve()) in msg and "download" in msg
    torch.save(laion_state_dict(dim=768), tmp_path / "l14.pth")
    cfg = clip_cfg(tiny_clip)
    cfg.head_weights = str(tmp_path / "l14.pth")
    with pytest.raises(ConfigError, match="768-d embeddings but .* gives 32-d"):
        build_scorer(cfg)
    cfg.clip_weights = str(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="score.clip_weights.*neither a file"):
        build_scorer(cfg)


def test_weights_never_unpickle_arbitrary_objects(tiny_clip, tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (print, ("unpickled!",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"layers.0.weight": Boom()}))
    cfg = clip_cfg(tiny_clip)
    cfg.head_weights = str(tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match="cannot load weights"):
        build_scorer(cfg)


def _features_by_the_formula(image: Image.Image) -> np.ndarray:
    """The technical scorer's terms as its docstring writes them, in float64 numpy (the reference)."""
    from zxl.scorers.technical import CROP, rgb_or_grey, small_copy

    quality = jpeg_quality(image)
    image = rgb_or_grey(image)
    w, h = image.size
    x0, y0 = max(0, (w - CROP) // 2) // 8 * 8, max(0, (h - CROP) // 2) // 8 * 8
    c = np.asarray(image.crop((x0, y0, min(w, x0 + CROP), min(h, y0 + CROP))).convert("L"), np.float64)
    noise = sharpness = blocking = 0.0
    if min(c.shape) >= 3:
        d2 = c[:, :-2] - 2 * c[:, 1:-1] + c[:, 2:]
        d2 = d2[:-2] - 2 * d2[1:-1] + d2[2:]
        noise = np.median(np.abs(d2)) / (0.6745 * 6)
        lap = c[1:-1, :-2] + c[1:-1, 2:] + c[:-2, 1:-1] + c[2:, 1:-1] - 4 * c[1:-1, 1:-1]
        sharpness = max(0.0, lap.var() - 20 * noise**2)
    if min(c.shape) >= 9:
        dx, dy = np.abs(np.diff(c, axis=1)), np.abs(np.diff(c, axis=0))
        on_x, on_y = np.arange(dx.shape[1]) % 8 == 7, np.arange(dy.shape[0]) % 8 == 7
        blocking = (dx[:, on_x].mean() + dy[on_y].mean() - dx[:, ~on_x].mean() - dy[~on_y].mean()) / 2
    bw, bh = __import__("zxl.buckets").buckets.nearest_bucket(w, h)
    small = np.asarray(small_copy(image).convert("RGB"), np.float64)
    grey = small @ [0.299, 0.587, 0.114]
    rg, yb = small[..., 0] - small[..., 1], (small[..., 0] + small[..., 1]) / 2 - small[..., 2]
    colour = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    res = min(1.0, 1.0 / max(bw / w, bh / h))
    return np.array([sharpness, noise, blocking, quality, res, grey.mean() / 255, grey.std() / 255, colour])


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (5, 9), (9, 9), (64, 31), (1100, 700)])
@pytest.mark.parametrize("noise", [20, 0])  # 0: salt and pepper, the median of |N * I| over 255 (the counting fallback)
def test_technical_features_equal_the_formula(size, noise):
    from zxl.scorers.technical import features

    rng = np.random.default_rng(size[0] * 7 + noise)
    base = np.linspace(0, 255, size[0])[None, :, None] * np.ones((size[1], 1, 3))
    pixels = base + rng.normal(0, noise, base.shape) if noise else rng.integers(0, 2, base.shape) * 255.0
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if size == (1100, 700) and not noise:
        assert features(img)[1] * 0.6745 * 6 > 255
    for im in (img, img.convert("L"), img.convert("RGBA")):
        np.testing.assert_allclose(features(im), _features_by_the_formula(im), rtol=1e-6, atol=1e-9)


def test_clip_mlp_normalises_a_batch_as_open_clip_does_each_image(tiny_clip):
    scorer = build_scorer(clip_cfg(tiny_clip))
    images = [im.convert("RGB") for im in _images()]
    batch = scorer.collate([scorer.prepare(im) for im in images])
    assert torch.equal(batch, torch.stack([scorer.preprocess(im) for im in images]))
