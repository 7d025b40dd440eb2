"""Perplexity and bits per byte over whole data sources (`olmo eval CKPT --perplexity DATA...`), one
result per source as Paloma reports them.

A source is token data (a token file, a directory from `olmo data tokenize`, a glob) or raw text
(`.jsonl`/`.json` with a `text` field, or `.txt` as one document; optionally `.gz`/`.zst`), which is
tokenized on the fly exactly as `olmo data tokenize` would (each document + EOS). Either way each
file's token stream is cut into consecutive windows of `seq_len` tokens, as training reads it, and
within a window every token but the first is predicted (the last window may be shorter).

    cross-entropy  = summed NLL (nats) / predicted tokens
    perplexity     = exp(cross-entropy)
    bits per byte  = summed NLL / ln 2 / UTF-8 bytes of the predicted tokens
Bytes per token come from the tokenizer: a byte-level BPE token's string has one character per byte;
EOS, padding and other special tokens count 0 bytes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from olmo_cli.errors import DataError, UsageError
from olmo_cli.eval.scoring import final_hidden, project

if TYPE_CHECKING:
    from olmo_cli.data.tokenizer import ResolvedTokenizer

__all__ = [
    "PplResult",
    "PplSource",
    "evaluate_source",
    "open_source",
    "predicted_tokens",
    "token_byte_lengths",
]

_PROJECT_ELEMENTS = 1 << 25


@dataclass
class PplSource:
    label: str
    kind: str  # "tokens" or "text"
    paths: list[str]
    streams: list[np.ndarray]  # one token stream per file


@dataclass
class PplResult:
    label: str
    tokens: int  # predicted tokens
    bytes: int
    nll: float  # summed, in nats
    windows: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cross_entropy(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        ce = self.cross_entropy
        return math.exp(ce) if ce < 700 else math.inf

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes if self.bytes else math.nan


def token_byte_lengths(tokenizer: ResolvedTokenizer, size: int) -> np.ndarray:
    """UTF-8 bytes each token id stands for ([size] int64; ids beyond the vocabulary count 0)."""
    spec = json.loads(tokenizer.json_text)
    byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    inner = tokenizer.tokenizer
    lengths = np.zeros(size, dtype=np.int64)
    for token_id in range(min(size, inner.get_vocab_size(with_added_tokens=True))):
        token = added.get(token_id)
        if token is not None:
            lengths[token_id] = 0 if token.get("special") else len(token["content"].encode("utf-8"))
        elif byte_level:
            piece = inner.id_to_token(token_id)
            lengths[token_id] = len(piece) if piece is not None else 0
        else:
            lengths[token_id] = len(inner.decode([token_id]).encode("utf-8"))
    for special in (tokenizer.identity.eos_token_id, tokenizer.identity.pad_token_id):
        if 0 <= special < size:
            lengths[special] = 0  # a document boundary is not text (OLMo-1's EOS 50279 is an added token)
    return lengths


def _label_and_path(item: str) -> tuple[str | None, str]:
    name, sep, path = item.partition("=")
    if sep and name and "/" not in name and not Path(item).exists():
        return name, path
    return None, item


def default_label(path: str) -> str:
    name = Path(path.rstrip("/")).name
    for suffix in (".gz", ".zst", ".zstd", ".npy", ".jsonl", ".json", ".ndjson", ".txt"):
        name = name.removesuffix(suffix)
    return name or path


def open_source(item: str, tokenizer: ResolvedTokenizer, default_dtype: str) -> PplSource:
    """`[LABEL=]PATH` -> the token streams of its files (raw text is tokenized here)."""
    from olmo_cli.data.inputs import classify, expand_inputs

    label, path = _label_and_path(item)
    label = label or default_label(path)
    if path.startswith(("http://", "https://", "s3://", "gs://", "hf://")):
        raise UsageError(f"--perplexity reads local data; {path} is remote", hint="download it first")
    local = Path(path)
    text_dir = local.is_dir() and not (local / "manifest.json").is_file() and not any(local.glob("*.npy"))
    if classify(local.name) is not None or text_dir:
        files = expand_inputs([path])
        return PplSource(label, "text", [f.name for f in files], [_tokenize(f, tokenizer) for f in files])
    from olmo_cli.data.paths import expand_data_paths

    token_files = expand_data_paths([path])
    streams = []
    for token_file in token_files:
        dtype = token_file.manifest.dtype if token_file.manifest is not None else default_dtype
        try:
            streams.append(np.memmap(token_file.path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r"))
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read token file {token_file.path}: {e}") from e
    return PplSource(label, "tokens", [f.path for f in token_files], streams)


def _tokenize(file: Any, tokenizer: ResolvedTokenizer) -> np.ndarray:
    """A raw text file's documents, each encoded + EOS, as `olmo data tokenize` writes them."""
    from olmo_cli.data.encode import Encoder, EncodeSettings
    from olmo_cli.data.inputs import iter_chunks

    settings = EncodeSettings(
        tokenizer_json=tokenizer.json_text,
        eos_token_id=tokenizer.identity.eos_token_id,
        bos_token_id=None,
        dtype="uint32",
        kind={0: file.kind},
        names={0: file.name},
    )
    encoder = Encoder(settings)
    parts = []
    for chunk in iter_chunks([file], txt_per_line=False):
        result = encoder.encode_chunk(chunk)
        if result.error is not None:
            raise DataError(result.error, hint='raw text is JSON Lines with a "text" field, or .txt files')
        parts.append(result.ids.astype(np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def windows(source: PplSource, seq_len: int, max_tokens: int | None) -> Iterator[np.ndarray]:
    """Consecutive windows of each stream; `max_tokens` caps the predicted tokens of the source."""
    left = max_tokens if max_tokens is not None else math.inf
    for stream in source.streams:
        for start in range(0, len(stream), seq_len):
            if left <= 0:
                return
            window = np.asarray(stream[start : start + seq_len], dtype=np.int64)
            if len(window) < 2:
                break
            if len(window) - 1 > left:
                window = window[: int(left) + 1]
            left -= len(window) - 1
            yield window


def predicted_tokens(source: PplSource, seq_len: int, max_tokens: int | None) -> int:
    """How many tokens `evaluate_source` will predict (every token but the first of each window)."""
    total = sum(len(stream) - math.ceil(len(stream) / seq_len) for stream in source.streams)
    return total if max_tokens is None else min(total, max_tokens)


@torch.no_grad()
def evaluate_source(
    model: nn.Module,
    source: PplSource,
    byte_lengths: np.ndarray,
    *,
    seq_len: int,
    batch_size: int,
    max_tokens: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
) -> PplResult:
    """Summed NLL, predicted tokens and their bytes over a source; `progress(n)` gets tokens done."""
    started = time.perf_counter()
    device = next(model.parameters()).device
    vocab = model.config.padded_vocab_size  # type: ignore[union-attr]
    autocast: Any = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    nll, tokens, nbytes, count = 0.0, 0, 0, 0
    batch: list[np.ndarray] = []
    pending = windows(source, seq_len, max_tokens)
    while True:
        window = next(pending, None)
        if window is not None:
            batch.append(window)
        if batch and (window is None or len(batch) == batch_size):
            targets = np.concatenate([w[1:] for w in batch])
            if targets.max(initial=0) >= vocab:
                raise DataError(
                    f"{source.label}: token id {int(targets.max())} is outside the model's {vocab} "
                    "embeddings",
                    hint="the data was tokenized with another tokenizer, or read with the wrong dtype",
                )
            with autocast:
                nll += _batch_nll(model, batch, device, vocab)
            tokens += len(targets)
            nbytes += int(byte_lengths[targets].sum())
            count += len(batch)
            if progress is not None:
                progress(len(targets))
            batch = []
        if window is None:
            break
    return PplResult(source.label, tokens, nbytes, nll, count, time.perf_counter() - started)


def _batch_nll(model: nn.Module, batch: list[np.ndarray], device: torch.device, vocab: int) -> float:
    width = max(len(w) for w in batch) - 1
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    for b, w in enumerate(batch):
        ids[b, : len(w) - 1] = torch.from_numpy(w[:-1])
    rows = torch.cat([torch.full((len(w) - 1,), b) for b, w in enumerate(batch)]).to(device)
    cols = torch.cat([torch.arange(len(w) - 1) for w in batch]).to(device)
    target = torch.from_numpy(np.concatenate([w[1:] for w in batch])).to(device)
    hidden = final_hidden(model, ids.to(device))[rows, cols]
    step = max(1, _PROJECT_ELEMENTS // vocab)
    total = 0.0
    for start in range(0, len(target), step):
        logits = project(model, hidden[start : start + step]).float()
        total += F.cross_entropy(logits, target[start : start + step], reduction="sum").item()
    return total
