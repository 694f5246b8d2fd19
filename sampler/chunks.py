"""Prompts and captions past 77 tokens: 75-token chunks, as ComfyUI encodes prompts and kohya
encodes training captions (docs/training.md "Long prompts and captions").

CLIP sees 77 positions: a start token, 75 tokens, an end token. Both tools encode a longer text as
several such chunks and put the encoders' outputs side by side, but they cut differently:

- **ComfyUI** (``comfy/sd1_clip.py``, ``SDTokenizer.tokenize_with_weights``) tokenizes each
  weighted segment of the prompt whole (older versions went word by word), keeps a segment's tokens
  in one chunk unless it has 8 tokens or more (an unweighted prompt is one long segment: cut every
  75 tokens; a short ``(smile:1.2)`` moves whole to the next chunk), closes a chunk with the end
  token and pads it (clip_l with the end token, clip_g with token 0), and encodes as many chunks as
  the prompt needs; the hidden states are concatenated (77·n positions), the pooled output is the first
  chunk's (``ClipTokenWeightEncoder.encode_token_weights``). A cond and an uncond of different
  lengths are repeated to their least common multiple (``CONDCrossAttn.concat``), which changes
  no attention output.
- **kohya** (``library/train_util.py`` ``get_input_ids``, ``library/sdxl_train_util.py`` /
  ``train_util.get_hidden_states_sdxl``) tokenizes the whole caption to ``max_token_length + 2``
  (75, 150 or 225, padded and truncated), cuts positions 1…75, 76…150, … into chunks that each get
  the start token and the sequence's last token around them (for the bigG tokenizer, whose pad is
  not its end token, a chunk whose content runs to the end gets the end token, and one that is
  all padding gets ``<BOS> <EOS> <PAD>…``), encodes each, and puts back one start token, the 75
  content positions of every chunk and the last position: ``max_token_length + 2`` positions,
  the same for every caption of a batch; the pooled output is the first chunk's.
"""

from __future__ import annotations

import math

import torch

MAX_WORD_LENGTH = 8  # ComfyUI: a word this long may be split across chunks


def comfyui_chunks(words: list[tuple[list[int], float]], start: int, end: int, pad: int,
                   max_length: int = 77) -> list[list[tuple[int, float]]]:  # fmt: skip
    """ComfyUI's batching of (a segment's tokens, its weight) into chunks of ``max_length`` (token,
    weight) pairs: start token, the tokens, end token, padding; a group under 8 tokens is never split."""
    chunks: list[list[tuple[int, float]]] = []
    chunk: list[tuple[int, float]] = [(start, 1.0)]
    chunks.append(chunk)
    for tokens, weight in words:
        group = [(t, weight) for t in tokens]
        large = len(group) >= MAX_WORD_LENGTH
        while group:
            if len(group) + len(chunk) > max_length - 1:
                room = max_length - len(chunk) - 1
                if large:  # split the word: as much as fits, then the end token
                    chunk.extend(group[:room])
                    chunk.append((end, 1.0))
                    group = group[room:]
                else:  # close this chunk, the word starts the next
                    chunk.append((end, 1.0))
                    chunk.extend([(pad, 1.0)] * room)
                chunk = [(start, 1.0)]
                chunks.append(chunk)
            else:
                chunk.extend(group)
                group = []
    chunk.append((end, 1.0))
    chunk.extend([(pad, 1.0)] * (max_length - len(chunk)))
    return chunks


def comfyui_tokens(text: str, tokenizer) -> list[int]:
    """The tokens of one weighted segment as ComfyUI takes them: the segment tokenized whole, without
    its start and end tokens (an empty segment gives none)."""
    return tokenizer(text)["input_ids"][1:-1] if text else []


def kohya_input_ids(text: str, tokenizer, max_token_length: int) -> torch.Tensor:
    """kohya's ``get_input_ids``: [chunks, 77] ids of a caption (one chunk, truncated, at 75)."""
    n = tokenizer.model_max_length  # 77
    if max_token_length <= n - 2:
        return tokenizer(text, padding="max_length", max_length=n, truncation=True, return_tensors="pt").input_ids
    ids = tokenizer(text, padding="max_length", max_length=max_token_length + 2, truncation=True,
                    return_tensors="pt").input_ids[0]  # fmt: skip
    bos, eos, pad = ids[0], tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for i in range(1, max_token_length + 2 - n + 2, n - 2):  # kohya: range(1, tokenizer_max_length - 77 + 2, 75)
        chunk = torch.cat((ids[:1], ids[i : i + n - 2], ids[-1:]))
        if pad != eos:  # SDXL's second tokenizer: kohya's "v2" rules
            if chunk[-2] != eos and chunk[-2] != pad:
                chunk[-1] = eos
            if chunk[1] == pad:
                chunk[1] = eos
        chunks.append(chunk)
    assert int(bos) == tokenizer.bos_token_id
    return torch.stack(chunks)


def kohya_join(hidden: torch.Tensor, max_token_length: int, n: int = 77) -> torch.Tensor:
    """kohya's reassembly in ``get_hidden_states_sdxl``: [b, chunks·77, d] → [b, max_token_length + 2, d]
    (the first start token, positions 1…75 of every chunk, the very last position)."""
    if max_token_length <= n - 2:
        return hidden
    parts = [hidden[:, :1]]
    for i in range(1, max_token_length, n):
        parts.append(hidden[:, i : i + n - 2])
    parts.append(hidden[:, -1:])
    return torch.cat(parts, dim=1)


def repeat_to_lcm(conds: list[torch.Tensor]) -> torch.Tensor:
    """ComfyUI's ``CONDCrossAttn.concat``: conds of different lengths repeated along the tokens to
    their least common multiple, then stacked (attention over k copies of the keys is unchanged)."""
    length = math.lcm(*(c.shape[1] for c in conds))
    return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in conds])


COMMA_BACKTRACK = 20  # A1111's default opts.comma_padding_backtrack


Chunk = tuple[list[int], list[float]]


def a1111_chunks(segments: list[tuple[list[int] | None, float]], start: int, end: int, comma: int | None,
                 backtrack: int = COMMA_BACKTRACK, length: int = 75) -> list[Chunk]:  # fmt: skip
    """A1111's ``tokenize_line`` (modules/sd_hijack_clip.py): (tokens, weight) per parsed segment (None
    for a BREAK) into chunks of ``length`` tokens padded with the end token, then ``[start] … [end]``.
    When a chunk is full and the last comma is at most ``backtrack`` tokens back, what follows the comma
    moves to the next chunk (the comma back-off), so a tag is not cut in two."""
    chunks: list[Chunk] = []
    tokens: list[int] = []
    mults: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal tokens, mults, last_comma
        pad = length - len(tokens)
        chunks.append(([start, *tokens, *[end] * max(pad, 0), end], [1.0, *mults, *[1.0] * max(pad, 0), 1.0]))
        tokens, mults, last_comma = [], [], -1

    for seg_tokens, weight in segments:
        if seg_tokens is None:  # BREAK
            close()
            continue
        for token in seg_tokens:
            if token == comma:
                last_comma = len(tokens)
            elif backtrack and len(tokens) == length and last_comma != -1 and len(tokens) - last_comma <= backtrack:
                at = last_comma + 1
                moved, moved_mults = tokens[at:], mults[at:]
                tokens, mults = tokens[:at], mults[:at]
                close()
                tokens, mults = moved, moved_mults
            if len(tokens) == length:
                close()
            tokens.append(token)
            mults.append(weight)
    if tokens or not chunks:
        close()
    return chunks
