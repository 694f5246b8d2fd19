"""sampler/chunks.py: prompts and captions past 77 tokens, cut as ComfyUI cuts prompts
(comfy/sd1_clip.py SDTokenizer.tokenize_with_weights) and kohya cuts captions (train_util
get_input_ids, get_hidden_states_sdxl); and the SDXL encodings built on them."""

import pytest
import torch

from zxl.sampler.chunks import comfyui_chunks, kohya_input_ids, kohya_join, repeat_to_lcm
from zxl.sampler.tokenizer import derived_tokenizers

BOS, EOS = 49406, 49407


def caption(n_tags: int) -> str:
    """n distinct tags, ~4 tokens each with the comma: 1 → 2 tokens, 20 → 69, 30 → 109, 40 → 149,
    55 → 209, 60 → 229."""
    return ", ".join(f"tag{i}" for i in range(n_tags))


def kohya_reference(text, tokenizer, max_token_length):
    """kohya's get_input_ids, transcribed: tokenizer_max_length = max_token_length + 2; for i in
    range(1, tokenizer_max_length - 77 + 2, 75): <BOS> ids[i:i+75] ids[-1]; v2 tokenizers (pad != eos)
    fix a chunk's end to <EOS> unless it ends <EOS>/<PAD>, and a chunk starting <BOS> <PAD> to <BOS> <EOS>."""
    tml = max_token_length + 2
    ids = tokenizer(text, padding="max_length", truncation=True, max_length=tml, return_tensors="pt").input_ids[0]
    out = []
    for i in range(1, tml - tokenizer.model_max_length + 2, tokenizer.model_max_length - 2):
        chunk = torch.cat((ids[0].unsqueeze(0), ids[i : i + 75], ids[-1].unsqueeze(0)))
        if tokenizer.pad_token_id != tokenizer.eos_token_id:
            if chunk[-2] != tokenizer.eos_token_id and chunk[-2] != tokenizer.pad_token_id:
                chunk[-1] = tokenizer.eos_token_id
            if chunk[1] == tokenizer.pad_token_id:
                chunk[1] = tokenizer.eos_token_id
        out.append(chunk)
    return torch.stack(out)


@pytest.mark.parametrize("text", [caption(1), " ".join(["a"] * 76), caption(40), caption(60)])  # 2, 76, 149, 229
@pytest.mark.parametrize("max_token_length", [150, 225])
def test_kohya_chunks_match_get_input_ids(text, max_token_length):
    for tok in derived_tokenizers():
        got = kohya_input_ids(text, tok, max_token_length)
        assert got.shape == (max_token_length // 75, 77)
        assert torch.equal(got, kohya_reference(text, tok, max_token_length))
        assert (got[:, 0] == BOS).all()


def test_kohya_at_75_is_one_truncated_window():
    tok = derived_tokenizers()[0]
    got = kohya_input_ids(caption(100), tok, 75)
    assert got.shape == (1, 77) and got[0, -1] == EOS


def test_kohya_join_keeps_bos_every_chunks_content_and_the_last_position():
    n, d = 3, 2
    hidden = torch.arange(n * 77, dtype=torch.float32).reshape(1, n * 77, 1).expand(2, -1, d)
    joined = kohya_join(hidden, 225)
    want = [0, *range(1, 76), *range(78, 153), *range(155, 230), 230]
    assert joined.shape == (2, 227, d) and joined[0, :, 0].tolist() == want


def test_comfyui_keeps_short_segments_whole_and_splits_long_ones():
    word = [1, 2, 3]  # a 3-token word
    words = [(word, 1.0)] * 30  # 90 tokens: the 26th word would cross position 76
    chunks = comfyui_chunks(words, BOS, EOS, 0)
    assert len(chunks) == 2 and all(len(c) == 77 for c in chunks)
    first = [t for t, _ in chunks[0]]
    assert first[0] == BOS and first[1:76] == word * 25 and first[76] == EOS  # 25 words, then the end token
    second = [t for t, _ in chunks[1]]
    assert second[:16] == [BOS, *word * 5] and second[16] == EOS and set(second[17:]) == {0}
    long = [(list(range(10, 110)), 1.5)]  # one 100-token "word": split across chunks
    split = comfyui_chunks(long, BOS, EOS, 0)
    assert [t for t, _ in split[0]][1:76] == list(range(10, 85)) and split[0][1][1] == 1.5
    assert [t for t, _ in split[1]][1:26] == list(range(85, 110)) and split[0][0][1] == 1.0  # BOS weight 1


def test_unequal_conds_repeat_to_their_lcm():
    a, b = torch.randn(1, 77, 4), torch.randn(1, 154, 4)
    both = repeat_to_lcm([a, b])
    assert both.shape == (2, 154, 4) and torch.equal(both[0, 77:], a[0]) and torch.equal(both[1], b[0])


@pytest.fixture(scope="module")
def model(tiny_sdxl):
    from zxl.sampler.pipeline import SDXL

    return SDXL.load(tiny_sdxl, device="cpu")


def test_a_long_prompt_renders_its_last_tags(model):
    short = caption(20)
    emb, pooled = model.encode_prompt(short)
    old, old_pooled = model.encode([short])  # within 75 tokens: the one-window encoding, exactly
    torch.testing.assert_close(emb, old) and torch.testing.assert_close(pooled, old_pooled)
    long = caption(30)  # 109 tokens
    a, pa = model.encode_prompt(long)
    b, pb = model.encode_prompt(long.replace("tag29", "cat ears"))
    assert a.shape[1] == 154  # two chunks of 77
    assert not torch.allclose(a[:, 77:], b[:, 77:]) and torch.allclose(a[:, :77], b[:, :77])
    torch.testing.assert_close(pa, pb)  # the pooled output is the first chunk's


def test_training_captions_up_to_225_tokens_reach_the_encoders(model):
    long = caption(55)  # 209 tokens: past 150
    changed = long.replace("tag54", "cat ears")
    e225, p225 = model.encode_with_grad([long, changed], 225)
    assert e225.shape[1] == 227 and not torch.allclose(e225[0], e225[1])
    e75, _ = model.encode_with_grad([long, changed], 75)
    assert e75.shape[1] == 77 and torch.allclose(e75[0], e75[1])  # one window cuts the last tags
    empty, _ = model.encode_with_grad([""], 225)  # caption dropout: the empty caption, same length
    assert empty.shape[1] == 227
    torch.testing.assert_close(p225[0], model.encode_with_grad([long], 75)[1][0])  # first chunk's pooled


def test_prompt_weights_move_tokens_the_tools_way(model):
    plain, _ = model.encode_prompt("1boy, smile, outdoors")
    same, _ = model.encode_prompt("1boy, (smile:1.0), outdoors")
    torch.testing.assert_close(same, plain)  # (tag:1.0) is tag
    heavy, _ = model.encode_prompt("1boy, (smile:1.5), outdoors")
    assert heavy.shape == plain.shape and not torch.allclose(heavy, plain)
    literal, _ = model.encode_prompt("1boy, (smile:1.5), outdoors", weights="none")
    assert not torch.allclose(literal, plain)  # the parentheses and the number read as text
    a1111, _ = model.encode_prompt("1boy, (smile:1.5), outdoors", weights="a1111")
    assert not torch.allclose(a1111, heavy)  # multiplied and renormalised, not moved from the empty prompt
    escaped, _ = model.encode_prompt("fate \\(series\\)")
    torch.testing.assert_close(escaped, model.encode_prompt("fate (series)", weights="none")[0])


def a1111_reference(segments, start, end, comma, backtrack=20):
    """A1111's tokenize_line (modules/sd_hijack_clip.py), transcribed without embeddings."""
    chunks, tokens, mults, last_comma = [], [], [], -1

    def next_chunk():
        nonlocal tokens, mults, last_comma
        to_add = 75 - len(tokens)
        if to_add > 0:
            tokens, mults = tokens + [end] * to_add, mults + [1.0] * to_add
        chunks.append(([start, *tokens, end], [1.0, *mults, 1.0]))
        tokens, mults, last_comma = [], [], -1

    for seg, weight in segments:
        if seg is None:
            next_chunk()
            continue
        for token in seg:
            if token == comma:
                last_comma = len(tokens)
            elif backtrack != 0 and len(tokens) == 75 and last_comma != -1 and len(tokens) - last_comma <= backtrack:
                at = last_comma + 1
                reloc, reloc_m = tokens[at:], mults[at:]
                tokens, mults = tokens[:at], mults[:at]
                next_chunk()
                tokens, mults = reloc, reloc_m
            if len(tokens) == 75:
                next_chunk()
            tokens.append(token)
            mults.append(weight)
    if tokens or not chunks:
        next_chunk()
    return chunks


@pytest.mark.parametrize("every", [3, 7, 30, 0])  # a comma every n tokens (0: none)
@pytest.mark.parametrize("n", [1, 75, 76, 150, 230])
def test_a1111_chunks_match_tokenize_line(every, n):
    from zxl.sampler.chunks import a1111_chunks

    comma = 267
    stream = [comma if every and i % every == every - 1 else 1000 + i for i in range(n)]
    segments = [(stream[: n // 2], 1.0), (stream[n // 2 :], 1.21)]
    got = a1111_chunks(segments, BOS, EOS, comma)
    assert got == a1111_reference(segments, BOS, EOS, comma)
    assert all(len(t) == len(m) == 77 for t, m in got)
    if every == 7 and n == 76:  # the 76th token would cut a tag: what follows the last comma moves on
        assert got[0][0][70:77] == [comma, *[EOS] * 6] and got[1][0][1:7] == stream[70:76]
    if n >= 20:
        broken = a1111_chunks([(stream[:10], 1.0), (None, -1.0), (stream[10:20], 1.0)], BOS, EOS, comma)
        assert len(broken) == 2 and broken[1][0][1:11] == stream[10:20]  # BREAK starts a chunk


def test_a1111_reading_of_a_long_prompt(model):
    long = caption(30)  # 109 tokens, commas between tags
    emb, pooled = model.encode_prompt(long, weights="a1111")
    assert emb.shape[1] == 154
    last = model.encode_prompt(long.replace("tag29", "cat ears"), weights="a1111")
    first = model.encode_prompt(long.replace("tag0", "cat ears"), weights="a1111")
    torch.testing.assert_close(last[1], pooled)  # the pooled output is the first chunk's
    assert not torch.allclose(first[1], pooled) and not torch.allclose(last[0][:, 77:], emb[:, 77:])
