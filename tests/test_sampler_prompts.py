"""Prompt files, infotext round trips and grids."""

import pytest
from PIL import Image

from zxl.config import ConfigError
from zxl.sampler.grid import make_grid, save_png
from zxl.sampler.prompts import NEGATIVE_PRESETS, Prompt, infotext, parse_infotext, read_prompt_file


def test_prompt_file_with_comments_and_every_option(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text(
        "# validation prompts\n"
        "\n"
        "score_9, 1girl, long hair --n score_1, lowres --w 832 --h 1216 --d 42 --l 4.5 --s 20 --ss euler_a\n"
        "score_8, a knight at sunset, mixed  # a trailing comment\n"
        "score_7, landscape --w 1216 --h 832 --ss k_dpm_2m\n"
    )
    a, b, c = read_prompt_file(f)
    assert (a.prompt, a.negative, a.width, a.height, a.seed, a.cfg, a.steps, a.sampler) == (
        "score_9, 1girl, long hair",
        "score_1, lowres",
        832,
        1216,
        42,
        4.5,
        20,
        "euler_ancestral",
    )
    assert b.prompt == "score_8, a knight at sunset, mixed" and b.negative == NEGATIVE_PRESETS["minimal"]
    assert (c.width, c.height, c.sampler) == (1216, 832, "dpmpp_2m")


@pytest.mark.parametrize(
    ("line", "message"),
    [("a cat --x 3", r"prompts.txt:1: unknown option --x; the options are --d, --h"),
     ("a cat --w 830", r"prompts.txt:1: --w 830: sizes must be positive multiples of 8"),
     ("a cat --ss plms", r"prompts.txt:1: unknown sampler 'plms'; choose from ddim, dpmpp_2m"),
     ("a cat --d many", r"--d wants a number"),
     ("a cat --l nan", r"prompts.txt:1: --l must be a number >= 0 \(the CFG scale\), got nan"),
     ("a cat --l -5", r"prompts.txt:1: --l must be a number >= 0 \(the CFG scale\), got -5.0"),
     ("a cat --s 0", r"prompts.txt:1: --s must be an integer from 1 to 1000 \(sampling steps\), got 0"),
     ("a cat --s 1001", r"prompts.txt:1: --s must be an integer from 1 to 1000")],
)  # fmt: skip
def test_bad_lines_name_the_line_and_the_choices(tmp_path, line, message):
    f = tmp_path / "prompts.txt"
    f.write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        read_prompt_file(f)


def test_infotext_round_trip():
    p = Prompt("score_9, 1girl, smile\nsecond line", negative=NEGATIVE_PRESETS["light"], seed=7, cfg=4.0, steps=28,
               sampler="euler_ancestral")  # fmt: skip
    text = infotext(p, model_name="zero-xl: final, merged", model_hash="abc123")
    assert text.splitlines()[-1].startswith("Steps: 28, Sampler: Euler a, CFG scale: 4, Seed: 7, Size: 832x1216")
    back = parse_infotext(text)
    assert back["prompt"] == p.prompt and back["negative"] == p.negative
    assert back["Model"] == "zero-xl: final, merged" and back["Model hash"] == "abc123" and back["Seed"] == "7"


def test_grid_size_labels_and_png_parameters(tmp_path):
    cells = [[Image.new("RGB", (64, 96), (i * 40, j * 40, 90)) for i in range(3)] for j in range(2)]
    grid = make_grid(cells, ["cfg 3", "cfg 4", "cfg 5"], ["seed 1", "seed 2"], title="score_9, 1girl")
    assert grid.width > 3 * 64 and grid.height > 2 * 96
    assert grid.getpixel((grid.width - 20, grid.height - 20)) != (255, 255, 255)  # the last cell is there
    path = save_png(grid, tmp_path / "grid.png", "score_9\nNegative prompt: score_1\nSteps: 28")
    with Image.open(path) as im:
        assert im.text["parameters"].startswith("score_9\nNegative prompt: score_1")
    with pytest.raises(ValueError, match="labels"):
        make_grid(cells, ["one"], ["a", "b"])
