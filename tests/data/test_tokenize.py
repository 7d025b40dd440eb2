"""`olmo data tokenize`: token ids against the `tokenizers` library, the output layout, file splitting,
determinism across process counts, resuming, bad input, and the input formats (.gz, .zst, .txt, remote)."""

from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pytest
from _tokenize_helpers import (
    BUILTIN,
    BUILTIN_FILE,
    dir_bytes,
    read_docs,
    sample_texts,
    write_jsonl,
)
from tokenizers import Tokenizer

import olmo_cli.data.inputs as inputs_module
from olmo_cli.data.tokenize import TokenizeOptions, tokenize
from tests._http_server import serve_directory
from tests.cli._helpers import run_olmo_here

TOK = Tokenizer.from_file(str(BUILTIN_FILE))
EOS = 0


def expected_ids(text: str, strip: bool = True) -> list[int]:
    """A document's ids: its text without the surrounding whitespace (upstream's prepare_memmap_dataset.py
    and `dolma tokens` strip it), encoded, then EOS."""
    return TOK.encode(text.strip() if strip else text, add_special_tokens=False).ids + [EOS]


@pytest.fixture
def corpus(tmp_path):
    """Two JSONL files: Dolma-style documents with ids and other fields, and bare ones without ids."""
    texts = sample_texts(120, seed=1)
    a = write_jsonl(
        tmp_path / "a.jsonl",
        [{"id": f"doc-{i}", "text": t, "source": "test", "added": "2024"} for i, t in enumerate(texts[:70])],
    )
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": t} for t in texts[70:]])
    return [a, b], texts


def test_ids_per_document_equal_the_tokenizers_library(corpus, tmp_path):
    (a, b), texts = corpus
    summary = tokenize([str(a), str(b)], BUILTIN, tmp_path / "out", TokenizeOptions(processes=1))
    docs = read_docs(tmp_path / "out")
    assert [d[0] for d in docs] == [f"doc-{i}" for i in range(70)] + [f"{b}:{line}" for line in range(1, 51)]
    for (_, ids, mask), text in zip(docs, texts, strict=True):
        assert ids.tolist() == expected_ids(text)
        assert mask is None
    m = summary.manifest
    assert m["format"] == "olmo-tokens/1" and m["dtype"] == "uint16"
    assert m["tokenizer"] == {
        "identifier": BUILTIN,
        "vocab_size": 4096,
        "eos_token_id": 0,
        "bos_token_id": None,
        "pad_token_id": 1,
        "sha256": hashlib.sha256(BUILTIN_FILE.read_bytes()).hexdigest(),
    }
    assert m["documents"] == 120 and m["tokens"] == sum(len(expected_ids(t)) for t in texts)
    assert m["inputs"] == [
        {"path": str(p), "bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in (a, b)
    ]
    assert m["skipped"] == {"empty": 0, "bad": 0}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == m
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest.json",
        "part-00000.docs.csv.gz",
        "part-00000.npy",
    ]


def test_files_split_between_documents_and_long_documents_get_their_own(tmp_path):
    texts = ["short one.", "word " * 300, "another short.", "and more text here.", "x " * 10]
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    limit = 40
    summary = tokenize(
        [str(path)], BUILTIN, tmp_path / "out", TokenizeOptions(max_tokens_per_file=limit, processes=1)
    )
    lengths = [len(expected_ids(t)) for t in texts]
    assert lengths[1] > limit
    # Greedy: a new file when the next document would pass the limit.
    files, current = [], []
    for n in lengths:
        if current and sum(current) + n > limit:
            files.append(current)
            current = []
        current.append(n)
    files.append(current)
    assert [[len(ids) for _, ids, _ in read_docs(tmp_path / "out")]] == [lengths]
    assert [(f["tokens"], f["documents"]) for f in summary.manifest["files"]] == [
        (sum(f), len(f)) for f in files
    ]
    assert [f["path"] for f in summary.manifest["files"]] == [f"part-{i:05d}.npy" for i in range(len(files))]


def test_outputs_are_byte_identical_for_one_and_two_processes(corpus, tmp_path, monkeypatch):
    (a, b), _ = corpus
    monkeypatch.setattr(inputs_module, "CHUNK_BYTES", 1000)  # many chunks in flight, finishing out of order
    options = {"max_tokens_per_file": 300}
    tokenize([str(a), str(b)], BUILTIN, tmp_path / "p1", TokenizeOptions(processes=1, **options))
    tokenize([str(a), str(b)], BUILTIN, tmp_path / "p2", TokenizeOptions(processes=2, **options))
    one, two = dir_bytes(tmp_path / "p1"), dir_bytes(tmp_path / "p2")
    assert len(one) > 6 and one.keys() == two.keys()
    assert one == two


def test_an_interrupted_run_resumes_to_identical_output(corpus, tmp_path, monkeypatch):
    (a, b), _ = corpus
    inputs = [str(a), str(b)]
    options = TokenizeOptions(processes=1, max_tokens_per_file=200)
    reference = tokenize(inputs, BUILTIN, tmp_path / "ref", options)

    class Stop(Exception):
        pass

    def stop_after_two_files(progress):
        if progress.files_done >= 2:
            raise Stop

    # Small chunks, so the run stops between chunks with later parts of the inputs still to do.
    monkeypatch.setattr(inputs_module, "CHUNK_BYTES", 2000)
    with pytest.raises(Stop):
        tokenize(inputs, BUILTIN, tmp_path / "out", options, on_progress=stop_after_two_files)
    state = tmp_path / "out" / ".olmo-tokenize"
    assert len(list(state.glob("part-*.json"))) < len(reference.manifest["files"])  # stopped part-way
    assert not (tmp_path / "out" / "manifest.json").exists()
    resumed = tokenize(inputs, BUILTIN, tmp_path / "out", options)
    assert resumed.resumed_files >= 2
    assert dir_bytes(tmp_path / "out") == dir_bytes(tmp_path / "ref")
    again = tokenize(inputs, BUILTIN, tmp_path / "out", options)
    assert again.already_complete and again.manifest == reference.manifest


def test_other_options_into_a_finished_directory_are_refused(corpus, tmp_path):
    (a, _), _ = corpus
    out = str(tmp_path / "out")
    first = run_olmo_here("data", "tokenize", str(a), "-t", BUILTIN, "-o", out, "-j", "1", "-q")
    assert first.returncode == 0, first.stderr
    proc = run_olmo_here("data", "tokenize", str(a), "-t", BUILTIN, "-o", out, "--no-eos", "-q")
    assert proc.returncode == 2 and "other inputs or options" in proc.stderr


# ---- bad input -----------------------------------------------------------------------------------


def _bad_file(tmp_path):
    lines = [
        json.dumps({"text": "fine"}),
        "{not json",
        json.dumps({"body": "no text field"}),
        json.dumps({"text": ""}),
        json.dumps({"text": "   \n"}),
        json.dumps(["a list"]),
        json.dumps({"text": 7}),
        json.dumps({"text": "also fine"}),
        "",  # a blank line: empty, not bad
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_json_stops_with_file_and_line(tmp_path):
    path = _bad_file(tmp_path)
    proc = run_olmo_here("data", "tokenize", str(path), "-t", BUILTIN, "-o", str(tmp_path / "o"), "-j", "1")
    assert proc.returncode == 3
    assert f"{path}:2: invalid JSON" in proc.stderr and "--skip-bad" in proc.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_missing_text_field_names_the_fields_found(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "x", "id": 3}) + "\n")
    proc = run_olmo_here("data", "tokenize", str(path), "-t", BUILTIN, "-o", str(tmp_path / "o"), "-j", "1")
    assert proc.returncode == 3 and f"{path}:2: no 'text' field (fields: body, id)" in proc.stderr


def test_skip_bad_counts_bad_and_empty_documents(tmp_path):
    path = _bad_file(tmp_path)
    args = ["data", "tokenize", str(path), "-t", BUILTIN, "-o", str(tmp_path / "o"), "--skip-bad", "--json"]
    proc = run_olmo_here(*args)
    err = proc.stderr
    assert proc.returncode == 0, err
    summary = json.loads(proc.stdout)
    assert summary["documents"] == 2
    assert summary["skipped"] == {"empty": 3, "bad": 4}
    assert f"{path}:2: invalid JSON" in err  # the skipped lines are named too
    assert [ids.tolist() for _, ids, _ in read_docs(tmp_path / "o")] == [
        expected_ids("fine"),
        expected_ids("also fine"),
    ]


def test_custom_text_field(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"content": "hello there"}])
    tokenize([str(path)], BUILTIN, tmp_path / "o", TokenizeOptions(text_field="content", processes=1))
    assert read_docs(tmp_path / "o")[0][1].tolist() == expected_ids("hello there")


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "caf\xe9 ok"}\n{"text": "lone \\ud800 surrogate"}\n{"text": "clean"}\n')
    summary = tokenize([str(path)], BUILTIN, tmp_path / "o", TokenizeOptions(processes=1))
    assert summary.manifest["invalid_utf8"] == 2
    ids = [ids.tolist() for _, ids, _ in read_docs(tmp_path / "o")]
    assert ids == [expected_ids("caf\ufffd ok"), expected_ids("lone \ufffd surrogate"), expected_ids("clean")]


# ---- options and formats -------------------------------------------------------------------------


def test_no_eos_bos_and_uint32(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "one"}, {"text": "two"}])
    summary = tokenize(
        [str(path)], BUILTIN, tmp_path / "o", TokenizeOptions(eos=False, dtype="uint32", processes=1)
    )
    assert summary.manifest["dtype"] == "uint32"
    assert (tmp_path / "o" / "part-00000.npy").stat().st_size == 4 * summary.manifest["tokens"]
    assert [ids.tolist() for _, ids, _ in read_docs(tmp_path / "o")] == [
        TOK.encode(t).ids for t in ("one", "two")
    ]


def test_a_vocabulary_past_uint16_writes_uint32_by_default(tmp_path):
    # OLMo 2's dolma2 vocabulary (100278 ids) does not fit uint16; upstream stores it as uint32.
    from tokenizers import models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(100278)}
    vocab["<|endoftext|>"] = vocab.pop("w100257")
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.save(str(tmp_path / "big.json"))
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "w3 w70000 w100277"}, {"text": "w65536"}])
    summary = tokenize([str(path)], str(tmp_path / "big.json"), tmp_path / "o", TokenizeOptions(processes=1))
    assert summary.manifest["dtype"] == "uint32"
    assert [ids.tolist() for _, ids, _ in read_docs(tmp_path / "o")] == [
        [3, 70000, 100277, 100257],
        [65536, 100257],
    ]


def test_bos_needs_a_tokenizer_with_one(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "one"}])
    proc = run_olmo_here("data", "tokenize", str(path), "-t", BUILTIN, "-o", str(tmp_path / "o"), "--bos")
    assert proc.returncode == 2 and "no BOS" in proc.stderr


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_jsonl(tmp_path, compression):
    texts = sample_texts(30, seed=4)
    suffix = {"gzip": ".jsonl.gz", "zstd": ".jsonl.zst"}[compression]
    path = write_jsonl(tmp_path / f"in{suffix}", [{"text": t} for t in texts], compress=compression)
    tokenize([str(path)], BUILTIN, tmp_path / "o", TokenizeOptions(processes=1))
    docs = read_docs(tmp_path / "o")
    assert [d[0] for d in docs] == [f"{path}:{i}" for i in range(1, 31)]
    assert [ids.tolist() for _, ids, _ in docs] == [expected_ids(t) for t in texts]


def test_text_files_whole_or_per_line_from_a_directory(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "b.txt").write_text("second file\nwith two lines\n")
    (src / "sub" / "a.txt.gz").write_bytes(gzip.compress(b"first file\r\n\nlast\n"))
    (src / "a.txt").write_text("")
    tokenize([str(src)], BUILTIN, tmp_path / "whole", TokenizeOptions(processes=1))
    whole = read_docs(tmp_path / "whole")
    assert [d[0] for d in whole] == [f"{src}/b.txt:1", f"{src}/sub/a.txt.gz:1"]
    assert [ids.tolist() for _, ids, _ in whole] == [
        expected_ids("second file\nwith two lines\n"),
        expected_ids("first file\r\n\nlast\n"),
    ]
    summary = tokenize(
        [str(src)], BUILTIN, tmp_path / "lines", TokenizeOptions(txt_per_line=True, processes=1)
    )
    lines = read_docs(tmp_path / "lines")
    assert [d[0] for d in lines] == [
        f"{src}/b.txt:1",
        f"{src}/b.txt:2",
        f"{src}/sub/a.txt.gz:1",
        f"{src}/sub/a.txt.gz:3",
    ]
    texts = ["second file", "with two lines", "first file", "last"]
    assert [ids.tolist() for _, ids, _ in lines] == [expected_ids(t) for t in texts]
    assert summary.manifest["skipped"]["empty"] == 1  # the blank line (the empty a.txt has no lines)


def test_globs_expand_in_sorted_order(tmp_path):
    for name in ("c", "a", "b"):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"text": f"file {name}"}])
    summary = tokenize([str(tmp_path / "*.jsonl")], BUILTIN, tmp_path / "o", TokenizeOptions(processes=1))
    assert [i["path"] for i in summary.manifest["inputs"]] == [str(tmp_path / f"{n}.jsonl") for n in "abc"]


def test_missing_input_is_a_data_error(tmp_path):
    proc = run_olmo_here("data", "tokenize", str(tmp_path / "nope.jsonl"), "-t", BUILTIN, "-o", str(tmp_path))
    assert proc.returncode == 3 and "does not exist" in proc.stderr


def test_remote_input_over_a_loopback_server(tmp_path, monkeypatch):
    import cached_path.common

    monkeypatch.setattr(cached_path.common, "CACHE_DIRECTORY", tmp_path / "cache")
    served = tmp_path / "served"
    served.mkdir()
    texts = sample_texts(20, seed=7)
    write_jsonl(served / "docs.jsonl.gz", [{"text": t} for t in texts], compress="gzip")
    with serve_directory(served) as base:
        url = f"{base}/docs.jsonl.gz"
        summary = tokenize([url], BUILTIN, tmp_path / "o", TokenizeOptions(processes=1))
    docs = read_docs(tmp_path / "o")
    assert [d[0] for d in docs] == [f"{url}:{i}" for i in range(1, 21)]
    assert [ids.tolist() for _, ids, _ in docs] == [expected_ids(t) for t in texts]
    assert summary.manifest["inputs"][0]["path"] == url
    assert summary.manifest["inputs"][0]["bytes"] == (served / "docs.jsonl.gz").stat().st_size


def test_cli_summary_table_and_json(corpus, tmp_path):
    (a, _), _ = corpus
    table = run_olmo_here("data", "tokenize", str(a), "-t", BUILTIN, "-o", str(tmp_path / "o"), "-j", "1")
    assert table.returncode == 0 and "documents" in table.stdout and "70" in table.stdout
    again = run_olmo_here("data", "tokenize", str(a), "-t", BUILTIN, "-o", str(tmp_path / "o"), "--json")
    summary = json.loads(again.stdout)
    assert summary["already_complete"] is True and summary["documents"] == 70
    assert np.fromfile(tmp_path / "o" / "part-00000.npy", dtype="<u2").size == summary["tokens"]


def test_surrounding_whitespace_is_left_out_unless_no_strip(tmp_path):
    texts = ["  indented start", "trailing space \n\n", "\u3000ideographic\u2003", "inner  \n  kept"]
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    tokenize([str(path)], BUILTIN, tmp_path / "stripped", TokenizeOptions(processes=1))
    stripped = [ids.tolist() for _, ids, _ in read_docs(tmp_path / "stripped")]
    assert stripped == [TOK.encode(t.strip(), add_special_tokens=False).ids + [EOS] for t in texts]
    assert stripped[3] == expected_ids("inner  \n  kept")  # whitespace inside a document stays
    tokenize([str(path)], BUILTIN, tmp_path / "kept", TokenizeOptions(strip=False, processes=1))
    kept = [ids.tolist() for _, ids, _ in read_docs(tmp_path / "kept")]
    assert kept == [expected_ids(t, strip=False) for t in texts]
    assert kept[:3] != stripped[:3]
    manifest = json.loads((tmp_path / "kept" / "manifest.json").read_text())
    assert manifest["options"]["strip"] is False
