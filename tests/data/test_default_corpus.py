"""The quickstart's data: the default corpus split into train and validation by module, tokenized once
with the project's pipeline, cached, and the same every time."""

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest
from _tokenize_helpers import read_docs

import olmo_cli.data.default_corpus as default_corpus
from olmo_cli.data.corpus import default_corpus_documents
from olmo_cli.data.default_corpus import default_corpus_data, document_group, split_documents
from olmo_cli.data.tokenizer import resolve_tokenizer
from olmo_cli.errors import UsageError

TOKENIZER = "builtin:tiny-bpe-4096"


@pytest.fixture
def stdlib(tmp_path):
    """A stand-in standard library: 120 modules, each giving a docstring and a source document."""
    root = tmp_path / "lib"
    root.mkdir()
    for i in range(120):
        (root / f"mod{i:03d}.py").write_text(f'"""Module number {i}."""\n\ndef f{i}():\n    """Doc {i}."""\n')
    return root


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Everything here must work without a network."""

    def refuse(*args, **kwargs):
        raise AssertionError("the default corpus tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _both(cache, root, **kwargs):
    common = dict(eos_token_id=0, cache_dir=cache, root=root, **kwargs)
    return default_corpus_data(TOKENIZER, **common), default_corpus_data(
        TOKENIZER, split="validation", **common
    )


def _tokens(files):
    return np.concatenate([np.fromfile(f, dtype=np.uint16) for f in files])


def test_splits_hold_out_whole_modules_and_match_the_tokenizer(stdlib, tmp_path):
    train, val = _both(tmp_path / "cache", stdlib)
    docs = list(default_corpus_documents(stdlib))
    # Independent of split_documents: the held-out modules are those named in validation.jsonl.
    held_ids = [json.loads(line)["id"] for line in (val[0].parent.parent / "validation.jsonl").open()]
    held_modules = {i.partition(":")[2] for i in held_ids}
    assert len(held_modules) == round(120 * 0.02) == 2
    for module in held_modules:  # both the docstrings and the source of a held-out module
        assert {f"stdlib-docs:{module}", f"stdlib-source:{module}"} <= set(held_ids)
    tok = resolve_tokenizer(TOKENIZER)
    for files, wanted in ((train, False), (val, True)):
        expected = [d for d in docs if (d.id.partition(":")[2] in held_modules) == wanted]
        # Stripped of surrounding whitespace, as upstream's prepare_memmap_dataset.py and dolma tokenize.
        ids = [tok.tokenizer.encode(d.text.strip(), add_special_tokens=False).ids + [0] for d in expected]
        np.testing.assert_array_equal(_tokens(files), np.concatenate(ids).astype(np.uint16))
    assert read_docs(train[0].parent)  # document boundaries, as `olmo data tokenize` writes them


def test_the_split_is_deterministic_and_independent_of_other_documents():
    from olmo_cli.data.corpus import Document

    docs = [Document(f"stdlib-{kind}:m{i}", "x") for i in range(200) for kind in ("docs", "source")]
    held = {d.id for d in split_documents(docs)["validation"]}
    assert held == {d.id for d in split_documents(list(reversed(docs)))["validation"]}
    assert len({document_group(i) for i in held}) == 4  # 2% of 200 modules
    # A module held out stays held out when unrelated modules come and go (ranked by hash alone).
    fewer = [d for d in docs if d.id in held or d.id.endswith(("1", "3"))]
    fewer_held = {d.id for d in split_documents(fewer)["validation"]}
    assert fewer_held <= held


def test_build_is_byte_identical_and_reused_without_rereading(stdlib, tmp_path, monkeypatch):
    first = _both(tmp_path / "a", stdlib)
    second = _both(tmp_path / "b", stdlib)
    for x, y in zip(first, second, strict=True):
        assert [f.read_bytes() for f in x] == [f.read_bytes() for f in y]
    stamps = [f.stat().st_mtime_ns for f in first[0]]

    def fail(*args, **kwargs):
        raise AssertionError("a cached corpus was read or tokenized again")

    monkeypatch.setattr(default_corpus, "default_corpus_documents", fail)
    monkeypatch.setattr("olmo_cli.data.tokenize.tokenize", fail)
    again = _both(tmp_path / "a", stdlib)
    assert again == first and [f.stat().st_mtime_ns for f in again[0]] == stamps


def test_an_interrupted_build_is_finished_by_the_next_call(stdlib, tmp_path, monkeypatch):
    import olmo_cli.data.tokenize as tokenize_module

    real = tokenize_module.tokenize
    calls = []

    def dies_on_validation(inputs, *args, **kwargs):
        calls.append(inputs)
        if "validation" in inputs[0]:
            raise KeyboardInterrupt
        return real(inputs, *args, **kwargs)

    monkeypatch.setattr(tokenize_module, "tokenize", dies_on_validation)
    with pytest.raises(KeyboardInterrupt):
        default_corpus_data(TOKENIZER, eos_token_id=0, cache_dir=tmp_path, root=stdlib)
    assert not list(tmp_path.rglob("ready.json"))  # no marker: the cache is not taken as complete
    monkeypatch.setattr(tokenize_module, "tokenize", real)
    train, val = _both(tmp_path, stdlib)
    assert train and val
    assert _tokens(train).size > 0 and _tokens(val).size > 0


def test_concurrent_first_uses_build_once(stdlib, tmp_path, monkeypatch):
    import olmo_cli.data.tokenize as tokenize_module

    real = tokenize_module.tokenize
    runs = []
    monkeypatch.setattr(tokenize_module, "tokenize", lambda *a, **k: runs.append(1) or real(*a, **k))
    results: list[list] = []
    threads = [threading.Thread(target=lambda: results.append(_both(tmp_path, stdlib)[0])) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and results[0] == results[1] == results[2]
    assert len(runs) == 2  # one build: the train split and the validation split, once each


def test_tokenizer_settings_get_their_own_cache(stdlib, tmp_path):
    a = default_corpus_data(TOKENIZER, eos_token_id=0, cache_dir=tmp_path, root=stdlib)
    b = default_corpus_data(TOKENIZER, eos_token_id=1, cache_dir=tmp_path, root=stdlib)
    assert a[0].parent != b[0].parent
    assert np.fromfile(b[0], dtype=np.uint16)[-1] == 1


def test_progress_reports_bytes_over_both_splits(stdlib, tmp_path):
    reports = []
    default_corpus_data(TOKENIZER, eos_token_id=0, cache_dir=tmp_path, root=stdlib, progress=reports.append)
    assert reports[0].bytes_total == 0  # reading the library: no total yet
    total = sum(p.stat().st_size for p in tmp_path.rglob("*.jsonl"))
    assert reports[-1].bytes_done == reports[-1].bytes_total == total
    done = [r.bytes_done for r in reports[1:]]
    assert done == sorted(done)


def test_unknown_split_is_a_usage_error(stdlib, tmp_path):
    with pytest.raises(UsageError, match="splits train, validation"):
        default_corpus_data(TOKENIZER, split="test", cache_dir=tmp_path, root=stdlib)  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_real_corpus(tmp_path):
    """This Python's standard library: a few MB of text, ~2% of modules held out."""
    train, val = _both(tmp_path, None)
    ready = json.loads(next(tmp_path.rglob("ready.json")).read_text())
    jsonl = {s: next(tmp_path.rglob(f"{s}.jsonl")).stat().st_size for s in ("train", "validation")}
    assert 5e6 < sum(jsonl.values()) < 15e6
    assert 0.005 < jsonl["validation"] / sum(jsonl.values()) < 0.1
    assert ready["tokens"]["train"] > 1_000_000 and ready["tokens"]["validation"] > 10_000
    assert _tokens(train).size == ready["tokens"]["train"]
