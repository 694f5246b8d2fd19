"""The CLIP BPE tokenizer both SDXL text encoders use, derived offline from open_clip's files.

open_clip ships its merges as ``bpe_simple_vocab_16e6.txt.gz``; transformers' ``CLIPTokenizer``
reads ``vocab.json`` + ``merges.txt``. Both are derived here from open_clip's own tokenizer
(49,408 tokens, 77 positions), with its ``<start_of_text>``/``<end_of_text>`` named as
transformers names them, so the two agree token for token without a download.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

SPECIAL = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


def write_clip_tokenizer_files(folder: str | Path) -> Path:
    """Write vocab.json and merges.txt into ``folder`` (once) and return it."""
    from open_clip.tokenizer import SimpleTokenizer

    folder = Path(folder)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = SimpleTokenizer()
    vocab = {SPECIAL.get(k, k): v for k, v in tok.encoder.items()}
    merges = sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for (a, b), _ in merges) + "\n")
    return folder


def clip_tokenizer(folder: str | Path, pad_token: str = "<|endoftext|>"):
    """A transformers ``CLIPTokenizer`` over the derived files (bigG pads with ``!``: pass it)."""
    from transformers import CLIPTokenizer

    folder = write_clip_tokenizer_files(folder)
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token, model_max_length=77
    )


_LOADED: dict[tuple, object] = {}


def load_tokenizer(folder: str | Path):
    """``CLIPTokenizer.from_pretrained(folder)``, read once per process while the folder's files are
    unchanged (their names, sizes and modification times are the key): an eval of ten checkpoints,
    a resume or a merge loads the same two tokenizers again, and parsing them costs ~0.4 s each.
    The instance is shared: encode with it, never change it."""
    from transformers import CLIPTokenizer

    folder = Path(folder).resolve()
    stats = sorted((p.name, p.stat()) for p in folder.iterdir() if p.is_file())
    key = (str(folder), tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats))
    if key not in _LOADED:
        _LOADED[key] = CLIPTokenizer.from_pretrained(folder)
    return _LOADED[key]


@functools.cache
def derived_tokenizers():
    """The two SDXL tokenizers over the files derived from open_clip (CLIP-L pads with
    ``<|endoftext|>``, bigG with ``!``), made once per process and shared like ``load_tokenizer``'s."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return clip_tokenizer(tmp), clip_tokenizer(tmp, pad_token="!")


def write_slow_files(tokenizer, folder: str | Path) -> Path:
    """``vocab.json`` and ``merges.txt`` of a BPE ``tokenizer`` into ``folder``, beside the
    ``tokenizer.json`` transformers 5 saves: transformers 4.x's ``CLIPTokenizer`` (kohya pins
    4.54.1, with diffusers 0.32.1) reads only these two files. Taken from the tokenizer's own model,
    so they say what its tokenizer.json says."""
    folder = Path(folder)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder
