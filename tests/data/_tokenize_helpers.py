"""Shared pieces of the tokenize tests: writing inputs and reading token directories."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

BUILTIN = "builtin:tiny-bpe-4096"
BUILTIN_FILE = Path(__file__).resolve().parents[2] / "olmo_cli" / "data" / "builtin" / "tiny-bpe-4096.json"

WORDS = (
    "the model reads tokens from memory mapped files while the optimizer steps and the loss falls slowly "
    "über naïve café 数据 données — résumé"
).split()


def sample_texts(n: int, seed: int = 0, words: int = 60) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        count = int(rng.integers(1, words))
        chosen = rng.choice(WORDS, size=count)
        texts.append(" ".join(chosen) + ("\n" if rng.random() < 0.3 else "."))
    return texts


def write_jsonl(path: Path, records: list[dict[str, Any]], *, compress: str | None = None) -> Path:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    if compress == "gzip":
        data = gzip.compress(data)
    elif compress == "zstd":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def read_docs(out: Path) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Every document of a token directory, in order: (id, token ids, label mask or None), read back
    through the manifest, the raw token files and the document boundary files."""
    manifest = json.loads((out / "manifest.json").read_text())
    docs = []
    for entry in manifest["files"]:
        tokens = np.fromfile(out / entry["path"], dtype=np.dtype(manifest["dtype"]).newbyteorder("<"))
        assert len(tokens) == entry["tokens"]
        mask = None
        if entry["label_mask"]:
            mask = np.fromfile(out / entry["label_mask"], dtype=np.bool_)
            assert len(mask) == len(tokens)
        with gzip.open(out / entry["docs"], "rt", encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["start", "end", "id"]
        assert len(rows) - 1 == entry["documents"]
        previous_end = 0
        for start, end, doc_id in rows[1:]:
            start, end = int(start), int(end)
            assert start == previous_end, "documents are contiguous within a file"
            previous_end = end
            docs.append((doc_id, tokens[start:end], None if mask is None else mask[start:end]))
        assert previous_end == len(tokens)
    return docs


def dir_bytes(out: Path) -> dict[str, bytes]:
    """Every file under a directory (hidden ones too), by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def docs_csv(rows: list[tuple[int, int, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("start", "end", "id"))
    writer.writerows(rows)
    return buffer.getvalue()
