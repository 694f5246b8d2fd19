"""Prompt weights as ComfyUI and A1111 read them: parsing, per-token weights, and weighting the
text encoders' hidden states. Pure functions; the text encoding calls them.

Parsing (``parse(text, style)``, ``--prompt-weights comfyui|a1111``) gives segments, a list of
``(text, weight)``; ``plain(segments)`` is the text with the syntax gone; ``token_weights``
tokenizes the segments into tokens and one weight per token; ``apply_comfyui`` / ``apply_a1111``
weight the encoder's output.

**ComfyUI** (``comfy/sd1_clip.py``: ``escape_important``, ``parse_parentheses``, ``token_weights``,
``unescape_important``, ``SDTokenizer.tokenize_with_weights``):

- ``\\(`` and ``\\)`` are literal parentheses; no other escape exists (``\\[`` and ``\\\\`` stay as
  written, backslash included). Square brackets are plain text: ComfyUI has no de-emphasis.
- ``(x)`` is x at the enclosing weight × 1.1; nesting multiplies: ``((x))`` is 1.1·1.1.
- ``(x:w)`` *sets* the weight of x to w (the last ``:`` inside the parentheses, not at their
  first position, followed by anything Python's ``float`` reads); it does not multiply with
  the enclosing weight: ``((x:2))`` is 2.0 and ``(a (b:2) c:1.5)`` is a 1.5, b 2.0, c 1.5.
  When the text after the last ``:`` is no number, the colon is text and the group is × 1.1.
- Groups are split at the outermost balanced parentheses, left to right: a ``(`` never closed
  stays text (``(a`` is "(a" at 1.0), a stray ``)`` stays text and makes what follows it text
  until the depth is back to zero (``a) (b)`` is one segment at 1.0); ``((a)`` is "(a" at 1.1.
- Segments are not merged, and empty groups ``()`` vanish.

**A1111** (``modules/prompt_parser.py``: ``parse_prompt_attention`` and its ``re_attention``,
``re_break``):

- ``(x)`` × 1.1 (``round_bracket_multiplier``), ``[x]`` × (1/1.1) (``square_bracket_multiplier``),
  ``(x:w)`` × w, all multiplying what encloses them; ``:w)`` needs ``[+-]?[.\\d]+`` right before
  the ``)`` (``(x:1.5 )`` is "x:1.5 " × 1.1).
- ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\\\`` are the literal character; a backslash before anything
  else vanishes.
- A bracket closed without one open, or a ``:w)`` with no ``(`` open, is text; brackets still open
  at the end apply to the end of the prompt (round ones first, then square ones).
- ``BREAK`` as a word (with the whitespace around it) becomes the marker ``("BREAK", -1.0)``;
  inside brackets the marker's weight is multiplied too and it is then text to A1111 (the
  word BREAK, tokenized with that negative weight).
- Adjacent segments of equal weight are merged; an empty prompt is ``[("", 1.0)]``.

Tokenizing. Both tools tokenize each segment on its own (so ``a(b)`` is "a" then "b", never
"ab"), without start/end tokens, every token carrying its segment's weight: A1111 in
``FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line`` (the merged segments, whole), ComfyUI in
``SDTokenizer.tokenize_with_weights``. Current ComfyUI tokenizes a segment whole as well (it
splits it only before ``embedding:`` names, read at commit b55c224); older ComfyUI (e.g. commit
00728eb) split each segment on spaces and newlines and tokenized word by word:
``token_weights(..., by_word=True)``.

Positions that get weight 1 in both tools: the start token, the end token and all padding
(ComfyUI appends them with 1.0 in ``tokenize_with_weights``; A1111's ``next_chunk`` gives them
multiplier 1.0). Neither tool weights the pooled output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from zxl.config import ConfigError

Segments = list[tuple[str, float]]
STYLES = ("comfyui", "a1111")
BREAK = ("BREAK", -1.0)
"""A1111's chunk break marker in the segments (``parse_prompt_attention`` writes ``["BREAK", -1]``)."""


# ComfyUI ------------------------------------------------------------------------------------------

_ESCAPED = {"\\)": "\0\1", "\\(": "\0\2"}  # escape_important's stand-ins, swapped back per segment


def _comfy_groups(text: str) -> list[str]:
    """Split at the outermost parentheses as ``parse_parentheses`` does: a group that opens at depth
    zero ends where the depth returns to zero; everything else is text between groups."""
    groups: list[str] = []
    current, depth = "", 0
    for ch in text:
        if ch == "(" and depth == 0:
            if current:
                groups.append(current)
            current = ch
        elif ch == ")" and depth == 1:
            groups.append(current + ch)
            current = ""
        else:
            current += ch
        depth += {"(": 1, ")": -1}.get(ch, 0)
    if current:
        groups.append(current)
    return groups


def _comfy_segments(text: str, weight: float, out: Segments) -> None:
    for group in _comfy_groups(text):
        if len(group) < 2 or group[0] != "(" or group[-1] != ")":
            out.append((group, weight))
            continue
        inner, inner_weight = group[1:-1], weight * 1.1
        colon = inner.rfind(":")
        if colon > 0:
            try:
                inner_weight = float(inner[colon + 1 :])
            except ValueError:
                pass
            else:
                inner = inner[:colon]
        _comfy_segments(inner, inner_weight, out)


def parse_comfyui(text: str) -> Segments:
    """Segments of ``text`` as ComfyUI weights them (the module docstring lists the rules)."""
    for escape, stand_in in _ESCAPED.items():
        text = text.replace(escape, stand_in)
    out: Segments = []
    _comfy_segments(text, 1.0, out)
    unescape = {stand_in: escape[1] for escape, stand_in in _ESCAPED.items()}
    result: Segments = []
    for segment, weight in out:
        for stand_in, char in unescape.items():
            segment = segment.replace(stand_in, char)
        result.append((segment, weight))
    return result


# A1111 --------------------------------------------------------------------------------------------

_A1111_TOKEN = re.compile(
    r"""
      \\[()\[\]\\]        # an escaped bracket or backslash: that character
    | \\                  # any other backslash: nothing
    | [(\[]               # opening brackets
    | :([+-]?[.\d]+)\)    # a weight closing a round bracket
    | [)\]]               # closing brackets
    | [^\\()\[\]:]+       # text
    | :                   # a colon that is no weight
    """,
    re.X,
)
_A1111_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ROUND = 1.1
_SQUARE = 1 / 1.1


def parse_a1111(text: str) -> Segments:
    """Segments of ``text`` as A1111's ``parse_prompt_attention`` weights them, BREAK markers
    included (the module docstring lists the rules). A weight A1111 cannot read either (``(a:.)``)
    is a ValueError."""
    res: list[list] = []  # [text, weight], weights scaled in place as brackets close
    rounds: list[int] = []
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for seg in res[start:]:
            seg[1] *= factor

    for m in _A1111_TOKEN.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            res.append([tok[1:], 1.0])
        elif tok == "(":
            rounds.append(len(res))
        elif tok == "[":
            squares.append(len(res))
        elif weight is not None and rounds:
            try:
                factor = float(weight)
            except ValueError:
                raise ValueError(f"prompt weight ':{weight})' is not a number (A1111 fails on it too)") from None
            scale(rounds.pop(), factor)
        elif tok == ")" and rounds:
            scale(rounds.pop(), _ROUND)
        elif tok == "]" and squares:
            scale(squares.pop(), _SQUARE)
        else:
            for i, part in enumerate(_A1111_BREAK.split(tok)):
                if i:
                    res.append(list(BREAK))
                res.append([part, 1.0])
    for start in rounds:
        scale(start, _ROUND)
    for start in squares:
        scale(start, _SQUARE)
    if not res:
        res = [["", 1.0]]
    merged: Segments = []
    for seg, w in res:
        if merged and merged[-1][1] == w:
            merged[-1] = (merged[-1][0] + seg, w)
        else:
            merged.append((seg, w))
    return merged


# Both ---------------------------------------------------------------------------------------------


def parse(text: str, style: str) -> Segments:
    """``parse_comfyui`` or ``parse_a1111`` by ``--prompt-weights``."""
    if style == "comfyui":
        return parse_comfyui(text)
    if style == "a1111":
        return parse_a1111(text)
    raise ConfigError(f"--prompt-weights must be one of {', '.join(STYLES)}, got '{style}'")


def _is_break(segment: tuple[str, float]) -> bool:
    return segment[0] == BREAK[0] and segment[1] == BREAK[1]  # A1111: text == 'BREAK' and weight == -1


def plain(segments: Sequence[tuple[str, float]]) -> str:
    """The segments' text without weights, what a tokenizer sees: escaped brackets are the literal
    brackets, and a BREAK marker (A1111 swallows the whitespace around the word) is one space."""
    return "".join(" " if _is_break(seg) else seg[0] for seg in segments)


def split_break(segments: Sequence[tuple[str, float]]) -> list[Segments]:
    """The segments between A1111's BREAK markers, one list per chunk A1111 starts. A1111 encodes
    every one, an empty one as a chunk of padding, except a last one that has no tokens
    (``tokenize_line`` closes the last chunk only when it holds tokens or is the only one): drop
    that one after tokenizing (``token_chunks`` does)."""
    pieces: list[Segments] = [[]]
    for seg in segments:
        if _is_break(seg):
            pieces.append([])
        else:
            pieces[-1].append((seg[0], seg[1]))
    return pieces


def token_weights(
    segments: Sequence[tuple[str, float]], tokenize: Callable[[str], list[int]], *, by_word: bool = False
) -> tuple[list[int], list[float]]:
    """Tokens of the segments in order and one weight per token, the segment's.

    ``tokenize(text)`` returns the ids of ``text`` without start and end tokens. Each segment is
    tokenized on its own, whole, as A1111 and current ComfyUI do; ``by_word`` splits each segment
    on spaces and newlines first and tokenizes word by word, as older ComfyUI did. The start
    token, end token and padding the caller adds around these get weight 1.0 in both tools.
    A BREAK marker is a ValueError: split the segments with ``split_break`` (or ``token_chunks``)."""
    tokens: list[int] = []
    weights: list[float] = []
    for seg in segments:
        text, weight = seg
        if _is_break(seg):
            raise ValueError("BREAK splits a prompt into chunks: use split_break or token_chunks")
        parts = [w for w in text.replace("\n", " ").split(" ") if w] if by_word else [text]
        for part in parts:
            ids = list(tokenize(part))
            tokens += ids
            weights += [float(weight)] * len(ids)
    return tokens, weights


def token_chunks(
    segments: Sequence[tuple[str, float]], tokenize: Callable[[str], list[int]], *, by_word: bool = False
) -> list[tuple[list[int], list[float]]]:
    """``token_weights`` of each piece between BREAK markers (``split_break``), as A1111 chunks them
    before its 75-token chunking: a last piece without tokens is dropped unless it is the only one."""
    chunks = [token_weights(piece, tokenize, by_word=by_word) for piece in split_break(segments)]
    if len(chunks) > 1 and not chunks[-1][0]:
        chunks.pop()
    return chunks


def _per_token(weights: torch.Tensor | Sequence[float], z: torch.Tensor) -> torch.Tensor:
    w = torch.as_tensor(weights, dtype=torch.float32, device=z.device)
    if w.shape != z.shape[:-1]:
        raise ValueError(f"one weight per token: weights {tuple(w.shape)} for hidden states {tuple(z.shape)}")
    return w.unsqueeze(-1)


def apply_comfyui(z: torch.Tensor, weights: torch.Tensor | Sequence[float], z_empty: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``ClipTokenWeightEncoder.encode_token_weights``: per token position j,
    ``z[j] = (z[j] - z_empty[j]) * w[j] + z_empty[j]``, and a position of weight 1.0 keeps z exactly.

    z: (…, n_tokens, d) hidden states of one 77-token chunk (or a batch of them); weights:
    (…, n_tokens), 1.0 at the start and end tokens and the padding; z_empty: (n_tokens, d), the same
    encoder's output for the empty prompt at the same length, i.e. the tokens
    ``[start, end, pad, pad, …]`` (ComfyUI's ``gen_empty_tokens``; SDXL's clip_l pads with the end
    token 49407, clip_g with 0). Every chunk of a long prompt is weighted against that same z_empty.
    Computed in float32 as ComfyUI does, returned in z's dtype."""
    w = _per_token(weights, z)
    z32, empty = z.float(), z_empty.to(device=z.device, dtype=torch.float32)
    weighted = (z32 - empty) * w + empty
    return torch.where(w == 1.0, z32, weighted).to(z.dtype)


def apply_a1111(z: torch.Tensor, weights: torch.Tensor | Sequence[float], *, normalize: bool = True) -> torch.Tensor:
    """A1111's emphasis (``sd_emphasis.EmphasisOriginal.after_transformers``, called from
    ``FrozenCLIPEmbedderWithCustomWordsBase.process_tokens`` for each 77-token chunk):
    ``z = z * w`` per token, then ``z = z * (mean_before / mean_after)`` with the means over every
    element of the chunk (start, end and padding positions included; for a batch of prompts A1111
    takes one mean over the whole batch: pass it as (batch, n_tokens, d)). ``normalize=False`` is
    A1111's "No norm" emphasis (the multiplication alone). A weighted chunk whose mean becomes
    0 gives inf/NaN, as in A1111.

    z: (…, n_tokens, d); weights: (…, n_tokens), 1.0 at the start and end tokens and the padding.
    Computed in float32, returned in z's dtype."""
    w = _per_token(weights, z)
    z32 = z.float()
    weighted = z32 * w
    if normalize:
        weighted = weighted * (z32.mean() / weighted.mean())
    return weighted.to(z.dtype)
