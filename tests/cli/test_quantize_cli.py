"""`olmo quantize` through the real entry point: an int4 checkpoint with the before/after report, the
result generating with `olmo generate`, a GGUF file, and user errors as one line with the right exit code.

The commands go through `main` in this process (`run_olmo_here`: the same exit codes and output, without
a fresh interpreter's import of torch per command); one usage error runs the installed `olmo`."""

from __future__ import annotations

import json

import pytest

from tests._fixtures import write_checkpoint
from tests.quant._helpers import SEQ, quant_config, write_tokens

from ._helpers import run_olmo, run_olmo_here


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize-cli")
    path, _ = write_checkpoint(root, quant_config(), seed=5)
    return path, write_tokens(root / "val", vocab=4096, instances=12)


@pytest.fixture(scope="module")
def int4(source, tmp_path_factory):
    ckpt, data = source
    out = tmp_path_factory.mktemp("q") / "tiny-int4"
    proc = run_olmo_here(
        "quantize", str(ckpt), "--method", "int4", "--output", str(out), "--eval", str(data), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_int4_report(int4):
    _, report = int4
    assert report["method"] == "int4" and report["group_size"] == 128 and report["format"] == "olmo-quant"
    assert report["modules"] == {"int4": 9}  # 4 Linear modules a block, 2 blocks, and the embedding
    assert report["size"]["ratio"] < 0.18
    ev = report["eval"]
    assert ev["tokens"] == 12 * (SEQ - 1)  # 12 windows of the model's length, all but the first predicted
    for side in ("before", "after"):
        assert ev[side]["perplexity"] > 1 and ev[side]["tokens_per_second"]["1"] > 0
    assert ev["perplexity_change"] == pytest.approx(
        ev["after"]["perplexity"] / ev["before"]["perplexity"] - 1, abs=1e-4
    )


def test_generate_loads_the_quantized_checkpoint(int4):
    out, _ = int4
    proc = run_olmo_here("generate", str(out), "--prompt", "def main", "-n", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)["results"][0]
    assert 1 <= result["completion_tokens"] <= 4 or result["finish_reason"] == "eos"
    # It says which quantization it runs: in --json, and on the status line.
    assert json.loads(proc.stdout)["quantization"] == {
        "method": "int4",
        "group_size": 128,
        "embeddings": True,
        "modules": 9,
        "int8_fallbacks": 0,
    }
    proc = run_olmo_here("generate", str(out), "--prompt", "def main", "-n", "4", COLUMNS="200")
    assert proc.returncode == 0 and "int4 weights (groups of 128))" in proc.stderr


def test_eval_loads_the_quantized_checkpoint(source, int4):
    """`olmo eval` takes the int4 output like any checkpoint; its perplexity stays near the source's."""
    ckpt, data = source
    out, report = int4
    ppl = {}
    for name, path in (("fp32", ckpt), ("int4", out)):
        proc = run_olmo_here("eval", str(path), "--perplexity", f"val={data}", "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["checkpoint_kind"] == ("quantized" if name == "int4" else "unsharded")
        ppl[name] = result["perplexity"]["val"]["perplexity"]
    assert abs(ppl["int4"] / ppl["fp32"] - 1) < 0.10
    # One perplexity definition (token-weighted): quantize --eval prints what eval --perplexity does.
    assert report["eval"]["before"]["perplexity"] == pytest.approx(ppl["fp32"], rel=1e-5)
    assert report["eval"]["after"]["perplexity"] == pytest.approx(ppl["int4"], rel=1e-5)


def test_gguf_export(source, tmp_path):
    ckpt, _ = source
    out = tmp_path / "tiny-q8_0.gguf"
    proc = run_olmo_here("quantize", str(ckpt), "--gguf", "q8_0", "--output", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["format"] == "gguf" and report["tensor_types"] == {"q8_0": 15}
    assert (
        out.stat().st_size == report["size"]["after_bytes"] and report["size"]["ratio"] < 0.35
    )  # q8_0: 34 bytes per 32 weights, plus the vocabulary


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ((), 2, "give --method int8|int4 or --gguf"),
        (("--method", "int8", "--group-size", "64"), 2, "--group-size applies to int4"),
        (("--method", "int4", "--group-size", "100"), 2, "group size 100 is not supported"),
        (("--gguf", "f16", "--eval", "x"), 2, "apply to --method"),
    ],
)
def test_usage_errors(source, tmp_path, args, code, message):
    ckpt, _ = source
    command = ("quantize", str(ckpt), "--output", str(tmp_path / "out"), *args)
    proc = run_olmo(*command) if not args else run_olmo_here(*command)  # the first through the script
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_quantized_checkpoint_is_not_quantized_again_and_bad_records_exit_4(int4, tmp_path):
    out, _ = int4
    proc = run_olmo_here("quantize", str(out), "--method", "int8", "--output", str(tmp_path / "again"))
    assert proc.returncode == 4 and "quantized checkpoint" in proc.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in out.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    record = json.loads((broken / "quantization.json").read_text())
    record["method"] = "int8"
    record["group_size"] = None
    (broken / "quantization.json").write_text(json.dumps(record))
    proc = run_olmo_here("generate", str(broken), "--prompt", "x", "-n", "1")
    assert proc.returncode == 4, proc.stderr
    assert "method = 'int8'" in proc.stderr and "Traceback" not in proc.stderr
