"""transformers' CLIPTokenizer over files derived from open_clip agrees with open_clip, token for token."""

import open_clip
import pytest

from zxl.sampler.tokenizer import clip_tokenizer

PROMPTS = [
    "score_9, score_8_up, 1girl, long hair, looking at viewer",
    "A knight in shining armour stands on a cliff at sunset, dramatic lighting!",
    "rating:general, year 2021, hatsune miku (vocaloid), twintails, ^_^, café, naïve résumé",
    "",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return clip_tokenizer(tmp_path_factory.mktemp("clip-tok"))


@pytest.mark.parametrize("prompt", PROMPTS)
def test_same_ids_as_open_clip(tok, prompt):
    ours = tok(prompt, padding="max_length", max_length=77, truncation=True)["input_ids"]
    theirs = open_clip.tokenize([prompt])[0].tolist()
    n = theirs.index(49407) + 1  # open_clip pads with 0 after <end_of_text>
    assert ours[:n] == theirs[:n]
    assert len(tok) == 49408 and tok.model_max_length == 77


def test_a_saved_tokenizer_is_read_once_until_its_files_change(tok, tmp_path):
    from zxl.sampler.tokenizer import derived_tokenizers, load_tokenizer

    folder = tmp_path / "tokenizer"
    tok.save_pretrained(folder)
    first = load_tokenizer(folder)
    assert load_tokenizer(folder) is first and load_tokenizer(tmp_path / "." / "tokenizer") is first
    assert first("1girl").input_ids == tok("1girl").input_ids
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"model_max_length": 77', '"model_max_length": 76'))
    again = load_tokenizer(folder)  # an edited file is read again
    assert again is not first and again.model_max_length == 76
    one, two = derived_tokenizers()
    assert derived_tokenizers()[0] is one and two.pad_token == "!" and one.pad_token == "<|endoftext|>"
