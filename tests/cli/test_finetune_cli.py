"""`olmo finetune` and `olmo finetune merge` through the real entry point: a checkpoint made by
`olmo train` finetuned on `olmo data tokenize --chat` output, fully and with LoRA; the merged weights
taken by `olmo generate`; user errors (a conflicting preset exits 2 naming the fields); and the one chat
template shared by `olmo data tokenize --chat` and `olmo generate --chat`.

The runs go through `main` in this process (`run_olmo_here`: the same exit codes and output without a
fresh interpreter per command); two of the user errors run the installed `olmo` as a user's shell does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.train._finetune_data import TOKENIZER, answer, chat_data, question

from ._helpers import run_olmo, run_olmo_here

SMALL = [
    *("--set", "model.d_model=32", "--set", "model.n_layers=2", "--set", "model.max_sequence_length=64"),
    *("--set", "global_train_batch_size=8", "--set", "device_train_microbatch_size=8"),
    *("--set", "precision=fp32", "--set", "speed_monitor.gpu_flops_available=1e12", "--no-wandb"),
]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def _user_error(proc, code: int) -> str:
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Chat data from the CLI, and a small run of `olmo train --preset tiny` on it."""
    root = tmp_path_factory.mktemp("ft-cli")
    (root / "chat").mkdir()
    chat_data(root / "prep", conversations=300)  # writes prep/chats.jsonl (and a tokenized copy)
    _ok(
        run_olmo_here(
            "data",
            "tokenize",
            str(root / "prep" / "chats.jsonl"),
            "--chat",
            "-t",
            TOKENIZER,
            "-o",
            str(root / "sft"),
            "--processes",
            "1",
        )
    )
    sets = [*SMALL, "--set", "max_duration=2", "--set", "stop_at=2", "--set", "save_interval=1000"]
    _ok(
        run_olmo_here(
            "train",
            "--preset",
            "tiny",
            "--data",
            str(root / "sft"),
            "--save-folder",
            str(root / "base"),
            *sets,
            cwd=root,
        )
    )
    return root


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_finetune_a_checkpoint_made_by_olmo_train(trained):
    root = trained
    out = root / "full"
    proc = _ok(
        run_olmo_here(
            "finetune",
            "--checkpoint",
            str(root / "base"),
            "--data",
            str(root / "sft"),
            "--save-folder",
            str(out),
            "--set",
            "max_duration=3",
            "--no-wandb",
            "--json",
            cwd=root,
        )
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = next(e for e in events if e["event"] == "run_started")
    assert started["start_step"] == 0 and started["resumed_from"].endswith("step2-unsharded")
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3]
    config = (out / "config.yaml").read_text()
    assert "reset_trainer_state: true" in config and "learning_rate: 2.0e-05" in config


def test_lora_finetune_merge_and_generate(trained):
    root = trained
    lora = root / "lora"
    _ok(
        run_olmo_here(
            "finetune",
            "-k",
            str(root / "base"),
            "-d",
            str(root / "sft"),
            "-o",
            str(lora),
            "--lora-rank",
            "2",
            "--lora-targets",
            "att_proj,ff_out",
            "--set",
            "max_duration=2",
            "--no-wandb",
            cwd=root,
        )
    )
    assert (lora / "adapter.safetensors").stat().st_size < 50_000
    merged = _ok(
        run_olmo_here("finetune", "merge", str(lora), "-o", str(root / "merged"), "--json", cwd=root)
    )
    summary = json.loads(merged.stdout)
    assert summary["rank"] == 2 and summary["targets"] == ["att_proj", "ff_out"] and summary["modules"] == 4
    assert summary["base"].endswith("step2-unsharded")
    generated = _ok(
        run_olmo_here("generate", str(root / "merged"), "--chat", "-p", "x=1", "-n", "3", "--json", cwd=root)
    )
    assert json.loads(generated.stdout)
    # The LoRA run's own checkpoint is not a plain model: the error says how to get one.
    unmerged = run_olmo_here("generate", str(lora), "-p", "x=1", "-n", "1", cwd=root)
    assert unmerged.returncode == 4, unmerged.stderr
    assert "olmo finetune merge" in unmerged.stderr and "Traceback" not in unmerged.stderr


def test_a_preset_of_another_architecture_exits_2_naming_the_fields(trained):
    root = trained
    proc = run_olmo_here(
        "finetune", "-k", str(root / "base"), "-d", str(root / "sft"), "--preset", "1b", cwd=root
    )
    err = _user_error(proc, 2)
    assert "describes another architecture" in err
    assert "model.d_model: checkpoint 32, config 2048" in err
    assert "model.n_layers: checkpoint 2, config 16" in err
    assert "hint:" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "needs --checkpoint"),
        (("-k", "nowhere", "--lora-alpha", "4"), "--lora-alpha without --lora-rank"),
        (("-k", "nowhere", "--lora-rank", "4", "--lora-targets", "att_proj,wte"), "unknown layer wte"),
        (("-k", "nowhere", "-d", "x"), "does not exist"),
    ],
)
def test_user_errors_are_one_line_with_a_hint(tmp_path, args, message):
    # The LoRA option errors in this process; the others through the installed `olmo`.
    lora = any(a.startswith("--lora") for a in args)
    proc = (
        run_olmo_here("finetune", *args, cwd=tmp_path) if lora else run_olmo("finetune", *args, cwd=tmp_path)
    )
    err = _user_error(proc, 4 if message == "does not exist" else 2)
    assert message in err and "hint:" in err


def test_tokenize_chat_and_generate_chat_render_the_same_template(tmp_path):
    """The prompt `olmo generate --chat` builds for a question is exactly the start of the conversation
    `olmo data tokenize --chat` wrote for that question and its answer, and the masked tokens that
    follow are the answer: one template, used by both commands."""
    from olmo_cli.commands.generate import _encode
    from olmo_cli.config.schema import DataConfig
    from olmo_cli.data.dataset import build_dataset
    from olmo_cli.data.tokenizer import resolve_tokenizer

    source = tmp_path / "one.jsonl"
    messages = [{"role": "user", "content": question(4)}, {"role": "assistant", "content": answer(4)}]
    source.write_text(json.dumps({"messages": messages}) + "\n")
    _ok(
        run_olmo_here(
            "data",
            "tokenize",
            str(source),
            "--chat",
            "-t",
            TOKENIZER,
            "-o",
            str(tmp_path / "tok"),
            "--processes",
            "1",
        )
    )
    dataset = build_dataset(DataConfig(), 1, [str(tmp_path / "tok")])  # instances of one token
    tokens = np.concatenate([dataset[i].input_ids for i in range(len(dataset))])
    mask = np.concatenate([dataset[i].label_mask for i in range(len(dataset))])

    tokenizer = resolve_tokenizer(TOKENIZER)
    (prompt,) = _encode([question(4)], [[("user", question(4))]], tokenizer)
    assert tokens[: len(prompt)].tolist() == prompt
    assert not mask[: len(prompt)].any()
    reply = tokens[len(prompt) :][mask[len(prompt) :]].tolist()
    assert tokenizer.decode(reply[:-1]) == answer(4) and reply[-1] == tokenizer.identity.eos_token_id
