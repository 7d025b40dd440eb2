"""What `olmo data inspect` reports about token data: dtype, tokens, documents, instances for a sequence
length, and the largest token id, which must lie below the model's vocabulary size.

Counting tokens and instances needs only file sizes; the largest id (and, without a manifest, the
document count from EOS ids) needs one pass over every token, done in fixed-size chunks so memory stays
flat however large the files are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from olmo_cli.data.dataset import MemmapDataset, dataset_from_token_files
from olmo_cli.data.paths import expand_data_paths
from olmo_cli.errors import DataError

SCAN_CHUNK_TOKENS = 1 << 23  # 16 MiB of uint16 per read

# progress(tokens scanned so far, tokens in all)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class FileSummary:
    path: str
    tokens: int
    instances: int
    documents: int | None
    max_token_id: int | None  # None for an empty file
    label_mask: str | None


@dataclass(frozen=True)
class TokenDataSummary:
    dtype: str
    seq_len: int
    files: list[FileSummary]
    tokens: int
    instances: int
    documents: int | None  # None when neither a manifest nor an EOS id says
    documents_from: str  # "manifest", "EOS count" or "unknown"
    max_token_id: int | None
    eos_token_id: int | None
    tokenizer: str | None  # the manifest's tokenizer identifier, when all files share one
    vocab_size: int | None  # the size the ids were checked against

    @property
    def dropped_tokens(self) -> int:
        """Tokens past the last whole instance of each file, which training never sees."""
        return self.tokens - self.instances * self.seq_len

    @property
    def fits_vocab(self) -> bool | None:
        if self.vocab_size is None or self.max_token_id is None:
            return None
        return self.max_token_id < self.vocab_size

    def check_vocab(self) -> None:
        """DataError when a token id is not below the vocabulary size it was inspected against."""
        if self.vocab_size is not None and self.max_token_id is not None:
            check_vocab(self.max_token_id, self.vocab_size)


def check_vocab(max_token_id: int, vocab_size: int) -> None:
    """Raise before training starts when the data holds an id the model's embedding does not have."""
    if max_token_id >= vocab_size:
        raise DataError(
            f"the data holds token id {max_token_id}, but the model's vocabulary has {vocab_size} ids "
            f"(0..{vocab_size - 1})",
            hint="the data was tokenized with another tokenizer than the model's: re-tokenize it, or set "
            "model.vocab_size (and embedding_size) to cover it",
        )


def inspect_token_data(
    paths: Sequence[str],
    seq_len: int,
    vocab_size: int | None = None,
    progress: Progress | None = None,
    *,
    dtype: str | None = None,
    eos_token_id: int | None = None,
    default_dtype: str | None = None,
    default_eos_token_id: int | None = None,
) -> TokenDataSummary:
    """Summarize token data (directories from `olmo data tokenize`, files, globs, URLs).

    `dtype` and `eos_token_id`, when given, win; else what the manifests say; else `default_dtype`
    (uint16 without one) and `default_eos_token_id` (without one, documents are counted only where a
    manifest gives them). Does not raise for ids beyond
    `vocab_size`: the summary's `check_vocab()` does, so a caller can show the numbers first.
    """
    files = expand_data_paths(paths)
    manifests = {f.manifest.directory: f.manifest for f in files if f.manifest is not None}
    dtype = dtype or _agreed("dtype", {m.dtype for m in manifests.values()}) or default_dtype or "uint16"
    if eos_token_id is None:
        eos_token_id = _agreed("EOS id", {m.eos_token_id for m in manifests.values()} - {None})
    if eos_token_id is None:
        eos_token_id = default_eos_token_id
    identifiers = {m.tokenizer.get("identifier") for m in manifests.values()}
    dataset = dataset_from_token_files(files, seq_len, dtype)
    scanned = [0]
    rows: list[FileSummary] = []
    for i, token_file in enumerate(files):
        # Count EOS ids only where no manifest gives the document count: it is a second pass over memory.
        count_eos = eos_token_id if token_file.documents is None else None
        max_id, eos = _scan(dataset, i, count_eos, scanned, progress)
        documents = token_file.documents if token_file.documents is not None else eos
        instances = int(dataset.file_instances[i])
        tokens = int(dataset.file_tokens[i])
        rows.append(FileSummary(token_file.path, tokens, instances, documents, max_id, token_file.label_mask))
    counts = [r.documents for r in rows]
    documents = None if None in counts else sum(c for c in counts if c is not None)
    from_manifest = all(f.documents is not None for f in files)
    ids = [r.max_token_id for r in rows if r.max_token_id is not None]
    return TokenDataSummary(
        dtype=dtype,
        seq_len=seq_len,
        files=rows,
        tokens=dataset.total_tokens,
        instances=len(dataset),
        documents=documents,
        documents_from="unknown" if documents is None else ("manifest" if from_manifest else "EOS count"),
        max_token_id=max(ids) if ids else None,
        eos_token_id=eos_token_id,
        tokenizer=next(iter(identifiers)) if len(identifiers) == 1 else None,
        vocab_size=vocab_size,
    )


def _scan(
    dataset: MemmapDataset,
    file_index: int,
    eos_token_id: int | None,
    scanned: list[int],
    progress: Progress | None,
) -> tuple[int | None, int | None]:
    """(largest id, EOS count or None) of one file, read in chunks; `scanned[0]` counts tokens read."""
    tokens = int(dataset.file_tokens[file_index])
    max_id: int | None = None
    eos = 0
    for start in range(0, tokens, SCAN_CHUNK_TOKENS):
        chunk = dataset.read_tokens(file_index, start, min(SCAN_CHUNK_TOKENS, tokens - start))
        chunk_max = int(chunk.max())
        max_id = chunk_max if max_id is None else max(max_id, chunk_max)
        if eos_token_id is not None:
            eos += int(np.count_nonzero(chunk == eos_token_id))
        scanned[0] += len(chunk)
        if progress is not None:
            progress(scanned[0], dataset.total_tokens)
    return max_id, (eos if eos_token_id is not None else None)


def _agreed(what: str, values: set[Any]) -> Any:
    """The one value all manifests give (None when none gives it)."""
    if len(values) > 1:
        raise DataError(
            f"the token directories disagree on the {what}: {sorted(map(str, values))}",
            hint="inspect data made with one tokenizer at a time",
        )
    return next(iter(values)) if values else None
