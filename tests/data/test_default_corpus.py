"""The quickstart's data: the default corpus split into train and validation, tokenized once, cached."""

from __future__ import annotations

import numpy as np
from _tokenize_helpers import read_docs

from olmo_cli.data.corpus import default_corpus_documents
from olmo_cli.data.default_corpus import HOLD_OUT_EVERY, default_corpus_data
from olmo_cli.data.tokenizer import resolve_tokenizer


def _fake_stdlib(root):
    for i in range(120):
        (root / f"mod{i:03d}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / f"mod{i:03d}.py").write_text(f'"""Module number {i}."""\n\ndef f{i}():\n    """Doc {i}."""\n')
    return root


def test_splits_partition_the_documents_and_match_the_tokenizer(tmp_path):
    root = _fake_stdlib(tmp_path / "lib")
    cache = tmp_path / "cache"
    train = default_corpus_data("builtin:tiny-bpe-4096", eos_token_id=0, cache_dir=cache, root=root)
    val = default_corpus_data(
        "builtin:tiny-bpe-4096", eos_token_id=0, split="validation", cache_dir=cache, root=root
    )
    docs = list(default_corpus_documents(root))
    held = [d for i, d in enumerate(docs) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
    kept = [d for i, d in enumerate(docs) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1]
    assert len(held) == len(docs) // HOLD_OUT_EVERY and len(kept) + len(held) == len(docs)
    tok = resolve_tokenizer("builtin:tiny-bpe-4096")
    for files, expected in ((train, kept), (val, held)):
        tokens = np.concatenate([np.fromfile(f, dtype=np.uint16) for f in files])
        ids = [tok.tokenizer.encode(d.text, add_special_tokens=False).ids + [0] for d in expected]
        want = np.concatenate(ids).astype(np.uint16)
        np.testing.assert_array_equal(tokens, want)
    assert read_docs(train[0].parent)  # the boundaries file is there, as for `olmo data tokenize`


def test_second_call_reuses_the_cache(tmp_path, monkeypatch):
    root = _fake_stdlib(tmp_path / "lib")
    first = default_corpus_data("builtin:tiny-bpe-4096", eos_token_id=0, cache_dir=tmp_path, root=root)
    stamp = [f.stat().st_mtime_ns for f in first]
    import olmo_cli.data.default_corpus as default_corpus

    def no_rereading(root=None):
        raise AssertionError("the cached corpus was read again")

    monkeypatch.setattr(default_corpus, "default_corpus_documents", no_rereading)
    again = default_corpus_data("builtin:tiny-bpe-4096", eos_token_id=0, cache_dir=tmp_path, root=root)
    assert again == first and [f.stat().st_mtime_ns for f in again] == stamp


def test_another_tokenizer_setting_gets_its_own_cache(tmp_path):
    root = _fake_stdlib(tmp_path / "lib")
    a = default_corpus_data("builtin:tiny-bpe-4096", eos_token_id=0, cache_dir=tmp_path, root=root)
    b = default_corpus_data("builtin:tiny-bpe-4096", eos_token_id=1, cache_dir=tmp_path, root=root)
    assert a[0].parent != b[0].parent
    assert np.fromfile(b[0], dtype=np.uint16)[-1] == 1
