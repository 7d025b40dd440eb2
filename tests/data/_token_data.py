"""Writing small token data the way upstream and `olmo data tokenize` lay it out (raw headerless
little-endian arrays, bool label masks, manifest.json), for the dataset, order and inspect tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_tokens(path: Path, tokens: Sequence[int] | np.ndarray, dtype: str = "uint16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(tokens).astype(np.dtype(dtype).newbyteorder("<")).tofile(path)
    return path


def random_tokens(rng: np.random.Generator, n: int, high: int = 50000) -> np.ndarray:
    return rng.integers(0, high, size=n, dtype=np.int64)


def write_token_dir(
    directory: Path,
    parts: Sequence[np.ndarray],
    *,
    dtype: str = "uint16",
    masks: Sequence[np.ndarray] | None = None,
    eos_token_id: int = 0,
    documents: Sequence[int] | None = None,
    order: Sequence[int] | None = None,
) -> Path:
    """A token directory as `olmo data tokenize` writes it; `order` lists the parts in the manifest
    in another order than their names sort in (to show the manifest, not the name, decides)."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, tokens in enumerate(parts):
        name = f"part-{i:05d}.npy"
        write_tokens(directory / name, tokens, dtype)
        mask_name = None
        if masks is not None:
            mask_name = f"part-{i:05d}.mask.npy"
            np.asarray(masks[i], dtype=np.bool_).tofile(directory / mask_name)
        docs = documents[i] if documents is not None else int(np.count_nonzero(tokens == eos_token_id))
        entries.append(
            {
                "path": name,
                "tokens": len(tokens),
                "documents": docs,
                "docs": f"part-{i:05d}.docs.csv.gz",
                "label_mask": mask_name,
            }
        )
    if order is not None:
        entries = [entries[i] for i in order]
    manifest = {
        "format": "olmo-tokens/1",
        "tokenizer": {
            "identifier": "builtin:tiny-bpe-4096",
            "vocab_size": 4096,
            "eos_token_id": eos_token_id,
            "bos_token_id": None,
            "pad_token_id": 1,
            "sha256": "0" * 64,
        },
        "dtype": dtype,
        "files": entries,
        "documents": sum(e["documents"] for e in entries),
        "tokens": sum(e["tokens"] for e in entries),
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def expected_instances(arrays: Sequence[np.ndarray], seq_len: int) -> list[np.ndarray]:
    """docs/format.md §3.3 written plainly: each file's whole instances in order, remainders dropped."""
    out = []
    for tokens in arrays:
        for k in range(len(tokens) // seq_len):
            out.append(np.asarray(tokens[k * seq_len : (k + 1) * seq_len], dtype=np.int64))
    return out
