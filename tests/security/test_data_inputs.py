"""Hostile and damaged data, through the installed `olmo`: token files that no longer match their
manifest, manifests that are not what they claim, np.save files, deeply nested or huge JSON Lines,
truncated and corrupt .gz/.zst inputs, and a disk that fills up during `olmo data tokenize`.

Each case asserts the exit code, exactly one `error:` line naming the file (and the numbers where there
are some), no traceback, a deadline, and that nothing appeared outside the output directory. One case
of each kind runs the installed `olmo`; the other cases of a parametrized kind run its `main` in this
process, in the same working directory (the same checks, without an interpreter start each).
"""

from __future__ import annotations

import errno
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import zstandard

from olmo_cli.data import inputs, parts
from olmo_cli.data.tokenize import TokenizeOptions, tokenize
from olmo_cli.errors import DataError
from tests.cli._helpers import run_olmo_here
from tests.data._token_data import write_token_dir
from tests.data._tokenize_helpers import dir_bytes, read_docs, sample_texts, write_jsonl
from tests.security._data_inputs import (
    BUILTIN,
    olmo,
    one_error,
    tokenize_on_full_tmpfs,
    tree,
)
from tests.security._full_disk import tmpfs_unavailable
from tests.train._runs import SEQ, pattern_tokens

TINY_TRAIN = [
    "--preset",
    "tiny",
    *("--set", "model.d_model=32", "--set", "model.n_heads=4", "--set", "model.n_layers=2"),
    *("--set", f"model.max_sequence_length={SEQ}", "--set", "model.vocab_size=60"),
    *("--set", "model.embedding_size=64", "--set", "global_train_batch_size=8"),
    *("--set", "device_train_microbatch_size=4", "--set", "precision=fp32", "--set", "evaluators=[]"),
    *("--set", "max_duration=1", "--no-wandb"),
]


def _truncated_dir(tmp_path: Path) -> tuple[Path, Path, int, int]:
    """A token directory whose only token file was cut to half: (dir, file, size now, size listed)."""
    directory = write_token_dir(tmp_path / "tok", [pattern_tokens(64 * SEQ, seed=3)])
    token_file = directory / "part-00000.npy"
    listed = token_file.stat().st_size
    os.truncate(token_file, listed // 2)
    return directory, token_file, listed // 2, listed


# ---- token files vs their manifest -------------------------------------------------------------------


def test_a_truncated_token_file_stops_data_inspect_naming_it_and_both_sizes(tmp_path):
    directory, token_file, size, listed = _truncated_dir(tmp_path)
    before = tree(tmp_path)
    line = one_error(olmo("data", "inspect", str(directory), "--seq-len", "16", cwd=tmp_path), 3)
    assert str(token_file) in line and f"{size:,} bytes" in line and f"{listed:,} bytes" in line
    assert f"{listed // 2:,} uint16 tokens" in line and "truncated" in line
    assert tree(tmp_path) == before


def test_a_truncated_token_file_stops_training_before_it_starts(tmp_path):
    directory, token_file, size, listed = _truncated_dir(tmp_path)
    before = tree(tmp_path)
    run_dir = tmp_path / "run"
    proc = olmo("train", *TINY_TRAIN, "--data", str(directory), "--save-folder", str(run_dir), cwd=tmp_path)
    line = one_error(proc, 3)
    assert str(token_file) in line and f"{size:,} bytes" in line and f"{listed:,} bytes" in line
    assert not run_dir.exists() and tree(tmp_path) == before


def test_a_truncated_token_file_stops_inspect_batch(tmp_path):
    directory, token_file, size, listed = _truncated_dir(tmp_path)
    proc = olmo("inspect-batch", "0", "--preset", "tiny", "--data", str(directory), cwd=tmp_path)
    line = one_error(proc, 3)
    assert str(token_file) in line and f"{size:,} bytes" in line and f"{listed:,} bytes" in line


def test_every_reader_of_token_data_refuses_the_truncated_file(tmp_path):
    """Training, inspect, inspect-batch, eval perplexity and quantize all expand data through here."""
    from olmo_cli.data.paths import expand_data_paths
    from olmo_cli.data.tokenizer import resolve_tokenizer
    from olmo_cli.eval.perplexity_sources import open_source

    directory, token_file, size, listed = _truncated_dir(tmp_path)
    with pytest.raises(DataError, match=f"{size:,} bytes.*{listed:,} bytes"):
        expand_data_paths([str(directory)])
    with pytest.raises(DataError, match=f"{size:,} bytes.*{listed:,} bytes"):
        open_source(str(directory), resolve_tokenizer(BUILTIN), "uint16")


def test_a_longer_file_or_a_cut_label_mask_is_refused_too(tmp_path):
    tokens = pattern_tokens(8 * SEQ, seed=1)
    directory = write_token_dir(tmp_path / "tok", [tokens], masks=[np.ones(len(tokens), dtype=bool)])
    with open(directory / "part-00000.npy", "ab") as f:
        f.write(b"\0\0")
    line = one_error(olmo("data", "inspect", str(directory), "--seq-len", "16", cwd=tmp_path), 3)
    assert "longer than it was written" in line
    os.truncate(directory / "part-00000.npy", len(tokens) * 2)
    os.truncate(directory / "part-00000.mask.npy", 10)
    line = one_error(olmo("data", "inspect", str(directory), "--seq-len", "16", cwd=tmp_path), 3)
    assert "part-00000.mask.npy is 10 bytes" in line and f"label mask of {len(tokens):,} tokens" in line


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda m: "{not json", "not readable JSON"),
        (lambda m: "[" * 100_000, "nested too deeply"),
        (lambda m: json.dumps({**m, "files": "part-00000.npy"}), "'files' list"),
        (
            lambda m: json.dumps({**m, "files": [{**m["files"][0], "tokens": "512"}]}),
            "files[0].tokens is '512'",
        ),
        (lambda m: json.dumps({**m, "files": [{**m["files"][0], "tokens": -1}]}), "files[0].tokens is -1"),
        (
            lambda m: json.dumps({**m, "files": [{**m["files"][0], "tokens": True}]}),
            "files[0].tokens is True",
        ),
        (
            lambda m: json.dumps({**m, "files": [{**m["files"][0], "path": "../outside.npy"}]}),
            "not a file name",
        ),
        (
            lambda m: json.dumps({**m, "files": [{**m["files"][0], "path": "/etc/hostname"}]}),
            "not a file name",
        ),
        (
            lambda m: json.dumps({**m, "files": [{**m["files"][0], "label_mask": "../x"}]}),
            "files[0].label_mask",
        ),
        (lambda m: json.dumps({**m, "files": [{**m["files"][0], "sha256": 7}]}), "not a sha256"),
    ],
    ids=[
        "not-json",
        "deep",
        "files-str",
        "tokens-str",
        "tokens-neg",
        "tokens-bool",
        "dotdot",
        "abs",
        "mask",
        "sha",
    ],
)
def test_a_damaged_or_hostile_manifest_is_one_data_error(tmp_path, damage, expected):
    directory = write_token_dir(tmp_path / "tok", [pattern_tokens(512, seed=2)])
    # A real token file right outside: a manifest naming it must not make olmo read it.
    np.zeros(512, dtype="<u2").tofile(tmp_path / "outside.npy")
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(damage(manifest))
    before = tree(tmp_path)
    run = olmo if expected == "not readable JSON" else run_olmo_here
    line = one_error(run("data", "inspect", str(directory), "--seq-len", "16", cwd=tmp_path), 3)
    assert expected in line and "manifest.json" in line
    assert tree(tmp_path) == before


def test_an_oversized_manifest_is_refused_without_reading_it(tmp_path):
    directory = write_token_dir(tmp_path / "tok", [pattern_tokens(512, seed=2)])
    os.truncate(directory / "manifest.json", 65 << 20)  # sparse: big by its size, cheap to make
    line = one_error(olmo("data", "inspect", str(directory), cwd=tmp_path), 3)
    assert f"{65 << 20:,} bytes" in line and f"{64 << 20:,}" in line


def test_an_np_save_file_is_named_as_such_with_the_fix(tmp_path):
    np.save(tmp_path / "saved.npy", np.arange(4096, dtype=np.uint16))
    proc = olmo("data", "inspect", str(tmp_path / "saved.npy"), "--seq-len", "16", cwd=tmp_path)
    line = one_error(proc, 3)
    assert "saved.npy" in line and "np.save" in line
    assert "tofile" in proc.stderr and "olmo data tokenize" in proc.stderr
    # In a directory without a manifest, too (its *.npy files are the data).
    (tmp_path / "dir").mkdir()
    np.save(tmp_path / "dir" / "a.npy", np.arange(64, dtype=np.uint32))
    proc = run_olmo_here(
        "train", *TINY_TRAIN, "--data", str(tmp_path / "dir"), "--save-folder", "run", cwd=tmp_path
    )
    assert "a.npy" in one_error(proc, 3) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.json.gz", "docs.jsonl.zst", "notes.txt", "dir", "url"])
def test_documents_given_as_token_data_point_at_data_tokenize(tmp_path, name):
    """A JSONL or text file (plain or compressed), a directory of them, or a URL of one, passed to --data,
    is named as documents with the tokenize command to run, before any run folder is made."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.jsonl").write_text('{"text": "hello"}\n')
    given = {"dir": str(docs), "url": "https://example.invalid/corpus/docs.jsonl.gz"}.get(name)
    if given is None:
        given = str(tmp_path / name)
        Path(given).write_bytes(b'{"text": "hello"}\n' * 64)
    proc = run_olmo_here("train", *TINY_TRAIN, "--data", given, "--save-folder", "run", cwd=tmp_path)
    line = one_error(proc, 3)
    assert given in line and "documents" in line and "not token ids" in line
    assert f"olmo data tokenize {given} --tokenizer" in proc.stderr
    assert not (tmp_path / "run").exists()


# ---- --verify ----------------------------------------------------------------------------------------


def _tokenized(tmp_path: Path, *extra: str) -> Path:
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in sample_texts(400, seed=9)])
    out = tmp_path / "tok"
    args = ["data", "tokenize", str(src), "-t", BUILTIN, "-o", str(out), "-j", "1", "-q", *extra]
    proc = olmo(*args, "--max-tokens-per-file", "2000", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return out


def test_verify_passes_on_fresh_output_and_reports_it_in_json(tmp_path):
    out = _tokenized(tmp_path)
    proc = olmo("data", "inspect", str(out), "--verify", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)["verify"]
    n_files = len(json.loads((out / "manifest.json").read_text())["files"])
    assert n_files > 2 and result["ok"] is True and result["mismatches"] == []
    assert result["files_checked"] == 2 * n_files and result["without_checksum"] == []  # tokens + docs
    assert result["bytes_hashed"] == sum(p.stat().st_size for p in out.glob("part-*"))


def test_verify_finds_a_flipped_byte_by_file(tmp_path):
    out = _tokenized(tmp_path)
    victim = out / "part-00001.npy"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the checksum can tell
    victim.write_bytes(bytes(data))
    assert olmo("data", "inspect", str(out), cwd=tmp_path).returncode == 0  # sizes alone cannot see it
    before = tree(tmp_path)
    proc = olmo("data", "inspect", str(out), "--verify", cwd=tmp_path)
    line = one_error(proc, 3)
    assert "1 of the" in line and "do not match" in line
    assert f"{victim}: its sha256 is" in proc.stderr
    assert "part-00000.npy" not in proc.stderr and "part-00002.npy" not in proc.stderr
    proc = olmo("data", "inspect", str(out), "--verify", "--json", cwd=tmp_path)
    one_error(proc, 3)
    result = json.loads(proc.stdout)["verify"]
    assert result["ok"] is False and [m["path"] for m in result["mismatches"]] == [str(victim)]
    assert tree(tmp_path) == before


def test_verify_of_raw_files_says_what_it_checks(tmp_path):
    np.arange(64, dtype="<u2").tofile(tmp_path / "a.npy")
    line = one_error(olmo("data", "inspect", str(tmp_path / "a.npy"), "--verify", cwd=tmp_path), 2)
    assert "no manifest.json" in line


# ---- bad inputs to tokenize --------------------------------------------------------------------------


def test_deeply_nested_json_lines_are_a_bad_line_not_a_crash(tmp_path):
    good = [json.dumps({"text": t}) for t in sample_texts(5, seed=1)]
    src = tmp_path / "deep.jsonl"
    src.write_text("\n".join([*good[:2], "[" * 100_000, *good[2:]]) + "\n")
    before = tree(tmp_path)
    proc = olmo(
        "data", "tokenize", str(src), "-t", BUILTIN, "-o", str(tmp_path / "out"), "-j", "1", cwd=tmp_path
    )
    line = one_error(proc, 3)
    assert f"{src}:3" in line and "nested too deeply" in line
    assert {k for k in tree(tmp_path) if k not in before} <= {
        k for k in tree(tmp_path) if k.startswith("out/")
    }
    proc = olmo(
        *("data", "tokenize", str(src), "-t", BUILTIN, "-o", str(tmp_path / "out2")),
        *("-j", "2", "--skip-bad", "--json"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["skipped"]["bad"] == 1 and summary["documents"] == 5


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


CORRUPT = {
    "truncated.jsonl.zst": (lambda d: _zstd(d)[: len(_zstd(d)) // 2], "truncated"),
    "header-cut.jsonl.zst": (lambda d: _zstd(d)[:6], "truncated"),
    "not-zstd.jsonl.zst": (lambda d: b"this is not zstd at all\n", "not zstd-compressed"),
    "trailing-junk.jsonl.zst": (lambda d: _zstd(d) + b"junk", "no zstd frame at byte"),
    "truncated.jsonl.gz": (lambda d: gzip.compress(d)[: len(gzip.compress(d)) // 2], "cannot read"),
    "flipped.jsonl.gz": (
        lambda d: (lambda g: g[:-12] + bytes([g[-12] ^ 0xFF]) + g[-11:])(gzip.compress(d)),
        "cannot read",
    ),
    "not-gzip.jsonl.gz": (lambda d: d, "cannot read"),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_a_damaged_compressed_input_is_one_error_naming_the_file(tmp_path, name):
    make, expected = CORRUPT[name]
    data = "".join(json.dumps({"text": t}) + "\n" for t in sample_texts(3000, seed=5)).encode()
    src = tmp_path / name
    src.write_bytes(make(data))
    out = tmp_path / "out"
    run = olmo if name == "truncated.jsonl.zst" else run_olmo_here
    proc = run("data", "tokenize", str(src), "-t", BUILTIN, "-o", str(out), "-j", "1", cwd=tmp_path)
    line = one_error(proc, 3)
    assert str(src) in line and expected in line
    assert not list(out.rglob("*.tmp")) and not (out / "manifest.json").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {name, "out", ".cache"}


def test_several_zstd_frames_are_all_read(tmp_path):
    """Before, only the first frame was read: a pzstd or concatenated file silently lost documents."""
    texts = sample_texts(60, seed=6)
    halves = [
        "".join(json.dumps({"text": t}) + "\n" for t in part).encode() for part in (texts[:25], texts[25:])
    ]
    src = tmp_path / "two.jsonl.zst"
    src.write_bytes(_zstd(halves[0]) + zstandard.ZstdCompressor(write_checksum=True).compress(halves[1]))
    tokenize([str(src)], BUILTIN, tmp_path / "out", TokenizeOptions(processes=1))
    assert len(read_docs(tmp_path / "out")) == 60


def test_an_over_long_line_is_read_past_in_bounded_memory(tmp_path, monkeypatch):
    # The limit is 64 MiB; shrunk here so the test writes kilobytes, not a 64 MiB line.
    monkeypatch.setattr(inputs, "MAX_RECORD_BYTES", 4096)
    monkeypatch.setattr(inputs, "_SKIP_PIECE", 1000)
    texts = sample_texts(4, seed=2)
    lines = [
        json.dumps({"text": texts[0]}),
        json.dumps({"text": "x" * 50_000}),
        json.dumps({"text": texts[1]}),
    ]
    src = tmp_path / "long.jsonl"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"long.jsonl:2: the record is {len(lines[1]) + 1:,} bytes, over"):
        tokenize([str(src)], BUILTIN, tmp_path / "out", TokenizeOptions(processes=1))
    summary = tokenize([str(src)], BUILTIN, tmp_path / "o2", TokenizeOptions(processes=1, skip_bad=True))
    assert summary.manifest["skipped"]["bad"] == 1
    assert [d[0] for d in read_docs(tmp_path / "o2")] == [f"{src}:1", f"{src}:3"]


# ---- a full disk during tokenize ---------------------------------------------------------------------


def _disk_full_input(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in sample_texts(2500, seed=11)])


class _Budget:
    """Files whose writes, together, fail with ENOSPC past `limit` bytes, as a full disk's do."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def open(self, path, mode="r", *args, **kwargs):
        real = open(path, mode, *args, **kwargs)
        budget = self

        class Limited:
            def write(self, data: bytes) -> int:
                if len(data) > budget.left:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                budget.left -= len(data)
                return real.write(data)

            def __getattr__(self, name):
                return getattr(real, name)

        return Limited()


def test_disk_full_injected_is_one_data_error_and_a_rerun_is_byte_identical(tmp_path, monkeypatch):
    src = _disk_full_input(tmp_path)
    options = TokenizeOptions(processes=1, max_tokens_per_file=4000)
    tokenize([str(src)], BUILTIN, tmp_path / "ref", options)
    out = tmp_path / "out"
    budget = _Budget(20_000)
    monkeypatch.setattr(parts, "open", budget.open, raising=False)
    with pytest.raises(DataError) as caught:
        tokenize([str(src)], BUILTIN, out, options)
    message = caught.value.message
    assert "no space left" in message and str(out) in message and "need about" in message
    assert "run the same command again" in (caught.value.hint or "")
    assert not list(out.rglob("*.tmp")), "the unfinished part's temporary files must be gone"
    assert not (out / "manifest.json").exists() and list(out.glob("part-*.npy")), "finished parts kept"
    monkeypatch.undo()
    summary = tokenize([str(src)], BUILTIN, out, options)
    assert summary.resumed_files > 0
    assert dir_bytes(out) == dir_bytes(tmp_path / "ref")


def test_disk_full_on_a_real_tmpfs_then_rerun_after_freeing_space(tmp_path):
    why_not = tmpfs_unavailable()
    if why_not is not None:
        pytest.skip(f"cannot mount a tmpfs here ({why_not}); the injected ENOSPC test covers the engine")
    src = _disk_full_input(tmp_path)
    reference = tmp_path / "ref"
    args = [str(src), "-t", BUILTIN, "-j", "1", "-q", "--max-tokens-per-file", "4000"]
    assert olmo("data", "tokenize", *args, "-o", str(reference), cwd=tmp_path).returncode == 0
    ref_size = sum(tree(reference).values())
    free = 48 * 1024
    assert ref_size > 2 * free, "the output must be larger than the space left free"
    report = tokenize_on_full_tmpfs(tmp_path, args, free=free)
    first = report["first"]
    assert first["rc"] == 3, first["stderr"]
    assert "Traceback" not in first["stderr"]
    errors = [line for line in first["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left" in errors[0] and "mnt/out" in errors[0]
    assert "need about" in errors[0]
    left = report["after_failure"]
    assert not [p for p in left if p.endswith(".tmp")], left
    assert all(p in (".filler", "out") or p.startswith("out/") for p in left), left
    # What stays is finished parts, each with its completion record: the space a re-run builds on.
    kept = [p.removeprefix("out/").removesuffix(".npy") for p in left if p.endswith(".npy")]
    assert kept and all(f"out/.olmo-tokenize/{stem}.json" in left for stem in kept), left
    assert report["second"]["rc"] == 0, report["second"]["stderr"]
    assert dir_bytes(tmp_path / "copied") == dir_bytes(reference)
