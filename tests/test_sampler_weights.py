"""Prompt weights: the expected segments are what ComfyUI's ``token_weights`` (comfy/sd1_clip.py) and
A1111's ``parse_prompt_attention`` (modules/prompt_parser.py) return for each prompt, its doctests
included; the weighting formulas are encode_token_weights' and sd_emphasis' EmphasisOriginal."""

import pytest
import torch

from zxl.config import ConfigError
from zxl.sampler.weights import (
    apply_a1111,
    apply_comfyui,
    parse,
    parse_a1111,
    parse_comfyui,
    plain,
    split_break,
    token_chunks,
    token_weights,
)

# prompt: (ComfyUI's segments, A1111's segments)
CASES = {
    "normal text": ([("normal text", 1.0)], [("normal text", 1.0)]),
    "a (b:1.5) c": ([("a ", 1.0), ("b", 1.5), (" c", 1.0)], [("a ", 1.0), ("b", 1.5), (" c", 1.0)]),
    "((b))": ([("b", 1.2100000000000002)], [("b", 1.2100000000000002)]),
    "[b]": ([("[b]", 1.0)], [("b", 0.9090909090909091)]),  # ComfyUI: square brackets are text
    "[a": ([("[a", 1.0)], [("a", 0.9090909090909091)]),
    "(b:1.0)": ([("b", 1.0)], [("b", 1.0)]),
    "\\(series\\)": ([("(series)", 1.0)], [("(series)", 1.0)]),
    "fate_\\(series\\)": ([("fate_(series)", 1.0)], [("fate_(series)", 1.0)]),
    # ComfyUI sets an explicit weight, A1111 multiplies it with the enclosing ones
    "(a (b:2) c:1.5)": ([("a ", 1.5), ("b", 2.0), (" c", 1.5)], [("a ", 1.5), ("b", 3.0), (" c", 1.5)]),
    "((b:2))": ([("b", 2.0)], [("b", 2.2)]),
    "[(a:1.3)]": ([("[", 1.0), ("a", 1.3), ("]", 1.0)], [("a", 1.1818181818181819)]),
    # unbalanced
    "(a": ([("(a", 1.0)], [("a", 1.1)]),
    "a)": ([("a)", 1.0)], [("a)", 1.0)]),
    "(a))": ([("a", 1.1), (")", 1.0)], [("a", 1.1), (")", 1.0)]),
    "a) (b)": ([("a) (b)", 1.0)], [("a) ", 1.0), ("b", 1.1)]),
    "((a)": ([("(a", 1.1)], [("a", 1.2100000000000002)]),
    # what follows the colon
    "(a:b)": ([("a:b", 1.1)], [("a:b", 1.1)]),
    "(a:)": ([("a:", 1.1)], [("a:", 1.1)]),
    "(:2)": ([(":2", 1.1)], [("", 1.0)]),
    "(a:1.5:2)": ([("a:1.5", 2.0)], [("a:1.5", 2.0)]),
    "(b:1.5 )": ([("b", 1.5)], [("b:1.5 ", 1.1)]),
    "(a:1.2e1)": ([("a", 12.0)], [("a:1.2e1", 1.1)]),
    "(a:.5)": ([("a", 0.5)], [("a", 0.5)]),
    "(a:-1)": ([("a", -1.0)], [("a", -1.0)]),
    "a:b": ([("a:b", 1.0)], [("a:b", 1.0)]),
    # empty, merging
    "": ([], [("", 1.0)]),
    "()": ([], [("", 1.0)]),
    "(a)(b)": ([("a", 1.1), ("b", 1.1)], [("ab", 1.1)]),
    "(unnecessary)(parens)": ([("unnecessary", 1.1), ("parens", 1.1)], [("unnecessaryparens", 1.1)]),
    # escapes: ComfyUI knows \( and \) only, A1111 drops any other backslash
    "\\(literal\\]": ([("(literal\\]", 1.0)], [("(literal]", 1.0)]),
    "a\\[b\\]": ([("a\\[b\\]", 1.0)], [("a[b]", 1.0)]),
    "a\\\\b": ([("a\\\\b", 1.0)], [("a\\b", 1.0)]),
    "a\\b": ([("a\\b", 1.0)], [("ab", 1.0)]),
    # BREAK: A1111's marker, text to ComfyUI
    "a BREAK b": ([("a BREAK b", 1.0)], [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    "BREAK a": ([("BREAK a", 1.0)], [("", 1.0), ("BREAK", -1.0), ("a", 1.0)]),
    "a BREAK": ([("a BREAK", 1.0)], [("a", 1.0), ("BREAK", -1.0), ("", 1.0)]),
    "(a BREAK b)": ([("a BREAK b", 1.1)], [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).": (
        [("a ", 1.0), ("(((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", 1.0)],
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
}


@pytest.mark.parametrize("prompt", list(CASES))
def test_segments_as_each_tool_parses_them(prompt):
    comfyui, a1111 = CASES[prompt]
    assert parse_comfyui(prompt) == comfyui
    assert parse(prompt, "comfyui") == comfyui
    assert parse_a1111(prompt) == a1111
    assert parse(prompt, "a1111") == a1111


def test_an_unknown_style_names_the_option():
    with pytest.raises(ConfigError, match="--prompt-weights"):
        parse("a", "compel")


def test_a_weight_a1111_cannot_read_fails():
    with pytest.raises(ValueError, match=r":\.\)"):
        parse_a1111("(a:.)")
    assert parse_a1111("a:.)") == [("a:.)", 1.0)]  # no ( open: text, as in A1111


def test_plain_drops_the_syntax_and_keeps_escaped_brackets():
    assert plain(parse_comfyui("1girl, (smile:1.2), fate_\\(series\\)")) == "1girl, smile, fate_(series)"
    assert plain(parse_a1111("1girl, [(smile:1.2)], fate_\\(series\\) \\[x\\]")) == "1girl, smile, fate_(series) [x]"
    assert plain(parse_a1111("a BREAK b")) == "a b"
    for style in ("comfyui", "a1111"):
        assert plain(parse("(tag:1.0)", style)) == plain(parse("tag", style)) == "tag"


VOCAB: dict[str, int] = {}


def toy_tokenize(text: str) -> list[int]:
    """Whitespace words to ids, no start/end tokens."""
    return [VOCAB.setdefault(word, 100 + len(VOCAB)) for word in text.split()]


def test_each_token_carries_its_segments_weight():
    tokens, weights = token_weights(parse_comfyui("a cat (on a mat:1.5), (night)"), toy_tokenize)
    assert tokens == toy_tokenize("a cat on a mat , night")
    assert weights == [1.0, 1.0, 1.5, 1.5, 1.5, 1.0, 1.1]
    for style in ("comfyui", "a1111"):
        assert token_weights(parse("(tag:1.0) x", style), toy_tokenize) == token_weights(
            parse("tag x", style), toy_tokenize
        )
        assert token_weights(parse("(tag:1.0) x", style), toy_tokenize)[1] == [1.0, 1.0]


def test_segments_are_tokenized_whole_or_word_by_word():
    calls: list[str] = []

    def tokenize(text):
        calls.append(text)
        return toy_tokenize(text)

    segments = parse_comfyui("a red\ncat (big dog:1.2)")
    whole = token_weights(segments, tokenize)
    assert calls == ["a red\ncat ", "big dog"]
    calls.clear()
    by_word = token_weights(segments, tokenize, by_word=True)
    assert calls == ["a", "red", "cat", "big", "dog"]
    assert whole == by_word == (toy_tokenize("a red cat big dog"), [1.0, 1.0, 1.0, 1.2, 1.2])


def test_break_splits_chunks_as_a1111_does():
    assert split_break(parse_a1111("a BREAK (b)")) == [[("a", 1.0)], [("", 1.0), ("b", 1.1)]]
    with pytest.raises(ValueError, match="split_break"):
        token_weights(parse_a1111("a BREAK b"), toy_tokenize)
    a, b = toy_tokenize("a b")
    assert token_chunks(parse_a1111("a BREAK (b)"), toy_tokenize) == [([a], [1.0]), ([b], [1.1])]
    assert token_chunks(parse_a1111("BREAK a"), toy_tokenize) == [([], []), ([a], [1.0])]  # a chunk of padding
    assert token_chunks(parse_a1111("a BREAK"), toy_tokenize) == [([a], [1.0])]  # no empty last chunk
    assert token_chunks(parse_a1111("BREAK"), toy_tokenize) == [([], [])]
    assert token_chunks(parse_a1111(""), toy_tokenize) == [([], [])]
    # inside brackets the marker is scaled, so A1111 tokenizes the word with the negative weight
    (tokens, weights) = token_chunks(parse_a1111("(a BREAK b)"), toy_tokenize)[0]
    assert tokens == toy_tokenize("a BREAK b") and weights == [1.1, -1.1, 1.1]


def test_comfyui_moves_each_token_from_the_empty_prompt_linearly():
    g = torch.Generator().manual_seed(0)
    z, z_empty = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    assert torch.equal(apply_comfyui(z, torch.ones(5), z_empty), z)
    w = torch.tensor([1.0, 1.5, 0.0, 2.0, 1.0])
    out = apply_comfyui(z, w, z_empty)
    assert torch.equal(out[[0, 4]], z[[0, 4]])  # weight 1: z exactly
    assert torch.allclose(out[2], z_empty[2])  # weight 0: the empty prompt's state
    assert torch.allclose(out[1], z_empty[1] + 1.5 * (z[1] - z_empty[1]))
    assert torch.allclose(out[3] - z_empty[3], 2 * (z[3] - z_empty[3]))
    assert torch.allclose(apply_comfyui(z[None], w[None], z_empty), out[None])  # a batch of chunks
    half = apply_comfyui(z.to(torch.bfloat16), w, z_empty)
    assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="one weight per token"):
        apply_comfyui(z, torch.ones(4), z_empty)


def test_a1111_multiplies_and_restores_the_mean():
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = apply_a1111(z, [1.0, 2.0])
    assert torch.allclose(out, torch.tensor([[1.0, 2.0], [6.0, 8.0]]) * (2.5 / 4.25))
    assert torch.allclose(out.mean(), z.mean())
    assert torch.equal(apply_a1111(z, [1.0, 2.0], normalize=False), torch.tensor([[1.0, 2.0], [6.0, 8.0]]))
    g = torch.Generator().manual_seed(1)
    zz = torch.randn(2, 77, 16, generator=g) + 0.5
    ww = torch.ones(2, 77)
    assert torch.equal(apply_a1111(zz, ww), zz)
    ww[:, 3:6] = torch.tensor([1.1, 1.21, 0.9090909090909091])
    out = apply_a1111(zz, ww)
    assert torch.allclose(out.mean(), zz.mean(), atol=1e-6)  # one mean over the whole batch
    ratio = out / (zz * ww[..., None])
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))  # one factor for every element
