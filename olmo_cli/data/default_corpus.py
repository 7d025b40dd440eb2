"""The quickstart's data: the default corpus (data/corpus.py: the standard library's documentation and
source, ~10 MB for CPython 3.11) tokenized on first use into a cache, split into train and validation.

Cache layout, one directory per Python (which supplies the text) and tokenizer (which encodes it):

    $XDG_CACHE_HOME/olmo/default-corpus/<python version>/<tokenizer name>-<key>/
        train.jsonl, validation.jsonl     the documents of each split (written atomically)
        train/, validation/               token directories made by the `olmo data tokenize` pipeline
        ready.json                        written last: the token files of each split

The key hashes the tokenizer's identity (its file's checksum and special ids) and this layout's version.
`ready.json` is the final marker: with it present a call returns at once. Without it the build runs
under a file lock (concurrent first uses, e.g. every rank of a torchrun job, wait for one build), and a
build killed half-way is resumed through the tokenize pipeline's own completion records.

The validation split holds out whole modules (a module's docstrings and its source together, since the
source contains the docstrings; or a reference topic): the 2% whose names hash lowest, so the choice
is deterministic and does not depend on the order or number of the other documents.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from olmo_cli.atomic import atomic_open, atomic_write_text
from olmo_cli.data.corpus import Document, corpus_version, default_corpus_documents
from olmo_cli.dirlock import waiting_lock
from olmo_cli.errors import UsageError

if TYPE_CHECKING:
    from olmo_cli.data.tokenize import TokenizeProgress

__all__ = [
    "default_cache_dir",
    "default_corpus_data",
    "document_group",
    "split_documents",
]

Split = Literal["train", "validation"]
SPLITS: tuple[Split, ...] = ("train", "validation")
VALIDATION_FRACTION = 0.02
READY = "ready.json"
_LAYOUT = "default-corpus/2"  # part of the cache key: bump when the split, layout or encoding changes


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "olmo" / "default-corpus"


def document_group(doc_id: str) -> str:
    """What a document is held out with: its module (docs and source go together), or its topic."""
    kind, _, name = doc_id.partition(":")
    return f"module:{name}" if kind.startswith("stdlib-") else doc_id


def _rank(group: str) -> str:
    return hashlib.sha256(group.encode("utf-8")).hexdigest()


def split_documents(documents: list[Document]) -> dict[Split, list[Document]]:
    """Train and validation documents, each in the corpus order; at least one group each (given two)."""
    groups = sorted({document_group(d.id) for d in documents}, key=_rank)
    held = min(max(1, round(len(groups) * VALIDATION_FRACTION)), len(groups) - 1)
    validation = set(groups[:held])
    out: dict[Split, list[Document]] = {"train": [], "validation": []}
    for doc in documents:
        out["validation" if document_group(doc.id) in validation else "train"].append(doc)
    return out


def default_corpus_data(
    tokenizer_identifier: str,
    *,
    eos_token_id: int | None = None,
    split: Split = "train",
    progress: Callable[[TokenizeProgress], None] | None = None,
    cache_dir: Path | str | None = None,
    processes: int = 1,
    root: Path | None = None,
) -> list[Path]:
    """The token files of one split of the default corpus, tokenized with `tokenizer_identifier`.

    The first call builds the cache (several seconds); later calls only read `ready.json`. The files hold
    uint16 ids for vocabularies up to 65536, else uint32 (their directory's manifest.json says which).
    `progress` first gets an all-zero report while the standard library is read (no total yet), then the
    pipeline's reports with bytes counted over both splits.
    `processes`: tokenizer processes (one is fastest for a corpus this size: no start-up cost).
    `root`: a directory to read instead of this Python's standard library (tests use a small one).
    """
    if split not in SPLITS:
        raise UsageError(f"the default corpus has the splits {', '.join(SPLITS)}, not {split!r}")
    from olmo_cli.data.tokenizer import resolve_tokenizer

    identity = resolve_tokenizer(tokenizer_identifier, eos_token_id=eos_token_id).identity
    key_source = {"corpus": corpus_version(), "layout": _LAYOUT, "tokenizer": identity.as_dict()}
    if root is not None:
        key_source["root"] = str(Path(root).resolve())
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:12]
    readable = "".join(c if c.isalnum() or c in "-_." else "-" for c in tokenizer_identifier)[-40:]
    python = corpus_version().replace("/", "-") if root is None else "custom-root"
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = base / python / f"{readable}-{key}"
    files = _ready_files(base)
    if files is None:
        with _build_lock(base):
            files = _ready_files(base)  # another process may have finished it while we waited
            if files is None:
                _build(base, tokenizer_identifier, eos_token_id, processes, progress, root, key_source)
                files = _ready_files(base)
    assert files is not None
    return files[split]


def _ready_files(base: Path) -> dict[Split, list[Path]] | None:
    """The marker's token files, or None when the cache is not (or no longer) complete."""
    try:
        ready = json.loads((base / READY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = {s: [base / p for p in ready["files"][s]] for s in SPLITS}
    if not all(p.is_file() for paths in files.values() for p in paths):
        return None
    return files


def _build(
    base: Path,
    tokenizer: str,
    eos_token_id: int | None,
    processes: int,
    progress: Callable[[TokenizeProgress], None] | None,
    root: Path | None,
    key_source: dict[str, object],
) -> None:
    from olmo_cli.data.tokenize import TokenizeOptions, TokenizeProgress, tokenize

    if progress:
        progress(TokenizeProgress(0, 0, 0, 0, 0))
    inputs = {s: base / f"{s}.jsonl" for s in SPLITS}
    if not all(p.is_file() for p in inputs.values()):  # written atomically: present means whole
        for name, docs in split_documents(list(default_corpus_documents(root))).items():
            _write_jsonl(inputs[name], docs)
    total = sum(p.stat().st_size for p in inputs.values())
    options = TokenizeOptions(eos_token_id=eos_token_id, processes=processes)
    ready: dict[str, object] = {"source": key_source, "files": {}, "documents": {}, "tokens": {}}
    offset = 0
    for name in SPLITS:

        def report(p: TokenizeProgress, offset: int = offset) -> None:
            if progress:
                progress(TokenizeProgress(p.documents, p.tokens, offset + p.bytes_done, total, p.files_done))

        summary = tokenize([str(inputs[name])], tokenizer, base / name, options, on_progress=report)
        manifest = summary.manifest
        ready["files"][name] = [f"{name}/{f['path']}" for f in manifest["files"]]  # type: ignore[index]
        ready["documents"][name] = manifest["documents"]  # type: ignore[index]
        ready["tokens"][name] = manifest["tokens"]  # type: ignore[index]
        offset += inputs[name].stat().st_size
    atomic_write_text(base / READY, json.dumps(ready, indent=2) + "\n")


def _write_jsonl(path: Path, documents: list[Document]) -> None:
    with atomic_open(path) as f:
        for doc in documents:
            f.write((json.dumps({"id": doc.id, "text": doc.text}, ensure_ascii=False) + "\n").encode("utf-8"))


def _build_lock(base: Path) -> AbstractContextManager[None]:
    """An exclusive lock on `base/.lock`, so that concurrent first uses build the corpus once."""
    base.mkdir(parents=True, exist_ok=True)
    return waiting_lock(base / ".lock")
