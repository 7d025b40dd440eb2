"""Every command on a tiny OLMo 2 model (issue 16 point 7): `olmo train --preset olmo2-tiny` shrunk, then
`inspect-batch` on its run, `finetune` (full and LoRA, then merge), `eval`, `quantize` and `generate` on
its checkpoints, through the real entry point. Each result is checked against something independent of
the command: the batch against the data order and the token files, the finetuned model's block against
OLMo 2's, the eval perplexity against the model's own loss, the int8 copy against the original."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from olmo_cli.checkpoint.unsharded import read_unsharded
from olmo_cli.load.build import load_model
from olmo_cli.load.read import read_checkpoint
from tests.train._finetune_data import TOKENIZER, chat_data

from ._helpers import run_olmo_here

SMALL = [
    *("--set", "model.d_model=64", "--set", "model.n_layers=2", "--set", "model.max_sequence_length=64"),
    *("--set", "global_train_batch_size=8", "--set", "device_train_microbatch_size=8"),
    *("--set", "precision=fp32", "--set", "speed_monitor.gpu_flops_available=1e12", "--no-wandb"),
]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("olmo2")
    chat_data(root / "prep", conversations=200)
    tokenize = ("data", "tokenize", str(root / "prep" / "chats.jsonl"), "--chat", "-t", TOKENIZER)
    _ok(run_olmo_here(*tokenize, "-o", str(root / "sft"), "--processes", "1"))
    sets = [*SMALL, "--set", "max_duration=3", "--set", "stop_at=3", "--set", "save_interval=1000"]
    train = (
        "train",
        "--preset",
        "olmo2-tiny",
        "--data",
        str(root / "sft"),
        "--save-folder",
        str(root / "base"),
    )
    _ok(run_olmo_here(*train, *sets, cwd=root))
    return root


def test_the_run_is_olmo2(trained):
    model = read_checkpoint(trained / "base").config.model
    assert (model.norm_after, model.attention_layer_norm, model.layer_norm_type) == (True, True, "rms")
    names = read_unsharded(trained / "base" / "step3-unsharded").model
    assert "transformer.blocks.0.q_norm.weight" in names and "transformer.ln_f.weight" in names


def test_inspect_batch_shows_the_instances_the_run_trained_on(trained):
    out = json.loads(
        _ok(run_olmo_here("inspect-batch", "1", "--run", str(trained / "base"), "--format", "json")).stdout
    )
    order = np.fromfile(trained / "base" / "train_data" / "global_indices.npy", dtype="<u4")
    items = out["batches"][0]["instances"]
    assert [item["index"] for item in items] == order[8:16].tolist()
    manifest = json.loads((trained / "sft" / "manifest.json").read_text())
    tokens = np.concatenate(
        [np.fromfile(trained / "sft" / f["path"], dtype="<u2") for f in manifest["files"]]
    ).astype(np.int64)
    for item in items:
        assert item["input_ids"] == tokens[item["index"] * 64 : (item["index"] + 1) * 64].tolist()


def test_full_and_lora_finetunes_then_merge_and_generate(trained):
    root = trained
    base = ("-k", str(root / "base"), "-d", str(root / "sft"), "--set", "max_duration=2", "--no-wandb")
    _ok(run_olmo_here("finetune", *base, "-o", str(root / "full"), cwd=root))
    full = read_checkpoint(root / "full").config.model
    assert full.norm_after and full.attention_layer_norm_with_affine
    _ok(run_olmo_here("finetune", *base, "-o", str(root / "lora"), "--lora-rank", "2", cwd=root))
    _ok(run_olmo_here("finetune", "merge", str(root / "lora"), "-o", str(root / "merged"), cwd=root))
    merged = read_unsharded(root / "merged").model
    original = read_unsharded(root / "base" / "step3-unsharded").model
    assert set(merged) == set(original)
    assert torch.equal(
        merged["transformer.blocks.0.q_norm.weight"], original["transformer.blocks.0.q_norm.weight"]
    )
    assert not torch.equal(
        merged["transformer.blocks.0.att_proj.weight"], original["transformer.blocks.0.att_proj.weight"]
    )
    out = _ok(run_olmo_here("generate", str(root / "merged"), "--chat", "-p", "x=1", "-n", "3", "--json"))
    result = json.loads(out.stdout)["results"][0]
    assert result["completion_tokens"] >= 1 or result["finish_reason"] == "eos"


def test_eval_perplexity_is_the_models_own_loss(trained, tmp_path):
    ckpt = trained / "base"
    ids = np.random.default_rng(0).integers(2, 4000, size=4 * 32).astype("<u2")
    ids.tofile(tmp_path / "val.npy")
    out = _ok(
        run_olmo_here(
            "eval", str(ckpt), "--perplexity", f"val={tmp_path / 'val.npy'}", "--seq-len", "32", "--json"
        )
    )
    result = json.loads(out.stdout)
    reported = json.dumps(result)
    model = load_model(read_checkpoint(ckpt)).eval()
    batch = torch.from_numpy(ids.astype(np.int64).reshape(4, 32))
    with torch.no_grad():
        logits = model(batch).float()
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
    )
    perplexities = [v for v in _numbers(result) if v > 1]
    assert any(math.isclose(p, math.exp(ce.item()), rel_tol=1e-3) for p in perplexities), reported[:2000]


def _numbers(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, float):
        yield value


def test_quantize_int8_and_generate_from_it(trained, tmp_path):
    ckpt = trained / "base"
    out = _ok(
        run_olmo_here("quantize", str(ckpt), "--method", "int8", "--output", str(tmp_path / "q"), "--json")
    )
    report = json.loads(out.stdout)
    assert report["method"] == "int8" and report["size"]["ratio"] < 0.5
    quantized = load_model(read_checkpoint(tmp_path / "q")).eval()
    original = load_model(read_checkpoint(ckpt)).eval()
    ids = torch.randint(2, 4000, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = original(ids).float(), quantized(ids).float()
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    gen = _ok(run_olmo_here("generate", str(tmp_path / "q"), "-p", "def main", "-n", "4", "--json"))
    result = json.loads(gen.stdout)["results"][0]
    assert 1 <= result["completion_tokens"] <= 4 or result["finish_reason"] == "eos"
