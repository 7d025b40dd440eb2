"""The default corpus as training data: the quickstart's token files, made on first use and cached.

`olmo_cli.data.corpus` says what the documents are (text from this Python's standard library); this
module splits them into train and validation, tokenizes both with the run's tokenizer through the same
pipeline as `olmo data tokenize`, and returns the token files. Every 50th document (2%) is held out for
the in-loop perplexity evaluation, so the validation loss is measured on text the model never trained on.

Cache layout: `<cache>/<python version>/<tokenizer key>/{train,validation}.jsonl` and `.../{train,
validation}/part-*.npy`. The JSON Lines files are written atomically and the tokenize pipeline is
resumable and marks completion with its manifest, so an interrupted first run finishes on the next one
and a finished cache is reused as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from olmo_cli.atomic import atomic_open
from olmo_cli.data.corpus import corpus_version, default_corpus_documents

if TYPE_CHECKING:
    from olmo_cli.data.tokenize import TokenizeProgress

Split = Literal["train", "validation"]
HOLD_OUT_EVERY = 50


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "olmo" / "default-corpus"


def _tokenizer_key(identifier: str, eos_token_id: int | None) -> str:
    digest = hashlib.sha256(f"{identifier}\0{eos_token_id}".encode()).hexdigest()[:12]
    readable = "".join(c if c.isalnum() or c in "-_." else "-" for c in identifier)[-40:]
    return f"{readable}-{digest}"


def _write_splits(directory: Path, root: Path | None) -> None:
    """train.jsonl and validation.jsonl, the latter every HOLD_OUT_EVERY-th document."""
    if (directory / "validation.jsonl").is_file():  # written second, and atomically: both are whole
        return
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_open(directory / "train.jsonl") as train, atomic_open(directory / "validation.jsonl") as val:
        for i, doc in enumerate(default_corpus_documents(root)):
            line = json.dumps({"id": doc.id, "text": doc.text}, ensure_ascii=False) + "\n"
            (val if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 else train).write(line.encode("utf-8"))


def default_corpus_data(
    tokenizer_identifier: str,
    *,
    eos_token_id: int | None = None,
    split: Split = "train",
    progress: Callable[[TokenizeProgress], None] | None = None,
    cache_dir: Path | None = None,
    processes: int | None = None,
    root: Path | None = None,
) -> list[Path]:
    """The token files of one split of the default corpus, tokenized on first use.

    `root` replaces this Python's standard library as the source (tests use a small directory).
    """
    from olmo_cli.data.tokenize import TokenizeOptions, tokenize

    source = corpus_version().replace("/", "-") if root is None else "custom-root"
    directory = (
        (cache_dir or default_cache_dir()) / source / _tokenizer_key(tokenizer_identifier, eos_token_id)
    )
    _write_splits(directory, root)
    options = TokenizeOptions(eos_token_id=eos_token_id, processes=processes)
    out = directory / split
    tokenize([str(directory / f"{split}.jsonl")], tokenizer_identifier, out, options, on_progress=progress)
    return sorted(p for p in out.glob("part-*.npy") if not p.name.endswith(".mask.npy"))
