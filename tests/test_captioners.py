"""Contract tests for every captioner, the template's sentences, the hf adapter on a tiny LLaVA."""

import pandas as pd
import pytest
from PIL import Image

from zxl.captioners.config import CaptionConfig
from zxl.captioners.hf import HFCaptioner, clean
from zxl.captioners.registry import CAPTIONERS, captioner_class, check
from zxl.captioners.template import TemplateCaptioner, character_name, sentence
from zxl.config import ConfigError

ROWS = pd.DataFrame(
    {
        "tags": [["1girl", "long_hair", "blonde_hair", "smile", "outdoors"], ["2boys", "hoodie", "night"], [], None],
        "characters": [["aoi_(zxl)"], [], [], None],
    }
)


def _images():
    return [Image.new("RGB", (40, 30), (200, 0, 0)), Image.new("RGBA", (20, 50), (0, 0, 200, 99)),
            Image.new("L", (30, 30), 128), Image.new("RGB", (64, 64), (0, 200, 0)).convert("P")]  # fmt: skip


@pytest.fixture(params=sorted(CAPTIONERS))
def captioner(request, tiny_llava):
    cfg = CaptionConfig(captioner=request.param, model=str(tiny_llava), max_new_tokens=6, batch_size=3)
    return captioner_class(request.param)(cfg)


def test_contract(captioner):
    """Every member: one string per row, in order, deterministic."""
    images = _images() if captioner.needs_images else None
    out = captioner.caption(images, ROWS)
    assert isinstance(out, list) and len(out) == len(ROWS) and all(isinstance(t, str) for t in out)
    assert captioner.caption(images, ROWS) == out


def test_template_sentences():
    assert sentence(["1girl", "long_hair", "blonde_hair", "smile", "outdoors"], ["aoi_(zxl)"]) == (
        "A girl, Aoi, with long blonde hair, smiling, outdoors."
    )
    assert sentence(["2girls", "twintails", "school_uniform", "glasses", "holding_umbrella", "rain"], []) == (
        "Two girls, with hair in twintails, wearing a school uniform and glasses, holding an umbrella, in the rain."
    )
    assert sentence(["no_humans", "city", "night"], []) == "A scene without people, in a city at night."
    assert sentence(["unknown_tag"], []) == ""
    assert character_name("hatsune_miku_(vocaloid)") == "Hatsune Miku"
    out = TemplateCaptioner().caption(None, ROWS)
    assert out[2] == out[3] == ""


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("The image shows a girl with long hair", "A girl with long hair."),
        ("This illustration depicts two cats on a roof.", "Two cats on a roof."),
        ("In this image, a knight stands guard", "A knight stands guard."),
        ("An anime-style illustration of a girl in a red dress.", "A girl in a red dress."),
        ("  a girl   smiling </s>", "A girl smiling."),
        ("", ""),
    ],
)
def test_stock_openings_are_removed(raw, cleaned):
    assert clean(raw) == cleaned


def test_hf_batches_like_one_at_a_time(tiny_llava):
    cfg = CaptionConfig(captioner="hf", model=str(tiny_llava), max_new_tokens=6, batch_size=4)
    hf = HFCaptioner(cfg)
    assert hf.family == "llava" and "descriptive caption" in hf.prompt
    images = _images()
    batched = hf.caption(images, ROWS)
    single = [hf.caption([im], ROWS.iloc[[i]])[0] for i, im in enumerate(images)]
    assert batched == single


def test_hf_errors_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="caption.model is empty"):
        check(CaptionConfig(captioner="hf"))
    with pytest.raises(ConfigError, match="no model folder"):
        check(CaptionConfig(captioner="hf", model=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot load"):
        HFCaptioner(CaptionConfig(captioner="hf", model=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="caption.captioner must be one of"):
        check(CaptionConfig(captioner="gpt"))
    with pytest.raises(ConfigError, match="caption.min_score"):
        check(CaptionConfig(min_score=0))
