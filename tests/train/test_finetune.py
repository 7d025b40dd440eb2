"""`olmo finetune`, the engine side: weights-only loading of our, upstream-layout and Hugging Face
checkpoints; label masks in the loss; a synthetic chat task learned from chance; the architecture taken
from the checkpoint; defaults; and `olmo resume` continuing a finetune from its own checkpoints."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from olmo_cli.checkpoint.unsharded import read_unsharded
from olmo_cli.config.loader import load_config
from olmo_cli.convert.export import export_hf
from olmo_cli.data.dataset import build_dataset
from olmo_cli.errors import ConfigError, UsageError
from olmo_cli.load.adapter import merge_adapter, read_adapter_base
from olmo_cli.load.build import load_model, load_tokenizer
from olmo_cli.load.read import read_checkpoint
from olmo_cli.train.finetune import (
    FINETUNE_MAX_GLOBAL_BATCH,
    WARMUP_FRACTION,
    FinetuneRequest,
    build_finetune_config,
)
from tests.checkpoint._upstream import write_upstream_safetensors
from tests.train._finetune_data import (
    SEQ,
    accuracy,
    base_checkpoint,
    base_config,
    chat_data,
    finetune_config,
    logits_of,
    losses,
    metrics,
    quiet,
)

FSDP = "_fsdp_wrapped_module."


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    return base_checkpoint(root / "base"), chat_data(root / "chat")


def test_masked_loss_equals_a_hand_computed_loss_over_the_unmasked_positions(tmp_path, material):
    base, data = material
    cfg = finetune_config(base, data, tmp_path / "run", "stop_at=1", "global_train_batch_size=4")
    quiet(cfg)
    found = metrics(tmp_path / "run")[0]["train/CrossEntropyLoss"]

    # The step's batch, read independently: the run's recorded order, the token and mask files.
    order = np.fromfile(tmp_path / "run" / "train_data" / "global_indices.npy", dtype=np.uint32)
    dataset = build_dataset(cfg.data, SEQ)
    instances = [dataset[int(i)] for i in order[:4]]
    ids = torch.tensor(np.stack([inst.input_ids for inst in instances]))
    mask = np.stack([inst.label_mask for inst in instances])
    assert mask.any() and not mask.all()
    logits = logits_of(load_model(read_checkpoint(base)), ids)
    masked = unmasked = 0.0
    for b in range(ids.shape[0]):
        for t in range(1, SEQ):  # token t is predicted from position t-1
            nll = -torch.log_softmax(logits[b, t - 1], dim=-1)[ids[b, t]].item()
            unmasked += nll
            masked += nll if mask[b, t] else 0.0
    # Upstream's normalization: the sum over counted tokens divided by all of the batch's tokens.
    assert found == pytest.approx(masked / ids.numel(), rel=1e-5)
    assert masked / ids.numel() < 0.5 * unmasked / ids.numel()  # the masked-out tokens really are left out


@pytest.fixture(scope="module")
def taught(tmp_path_factory, material):
    """The base finetuned on the task (x=d -> d+3): the accuracy before and the finished run."""
    base, data = material
    before, _ = accuracy(base)
    cfg = finetune_config(
        base,
        data,
        tmp_path_factory.mktemp("taught") / "run",
        "optimizer.learning_rate=3e-3",
        "device_train_microbatch_size=16",
    )
    return before, cfg, quiet(cfg)


def test_a_tiny_model_learns_a_synthetic_chat_task_from_chance(taught):
    before, cfg, result = taught
    after, texts = accuracy(result.checkpoint)
    assert before <= 0.2  # chance is 0.1
    assert after > 0.9, texts
    assert result.step == cfg.stop_at


def test_lora_teaches_the_finetuned_model_a_new_mapping(tmp_path, taught):
    """Rank 8 adapters (a few percent of the parameters) on the finetuned model learn x=d -> d+5 from
    chance; merged into full weights they answer as well, while the base checkpoint is unchanged."""
    _, _, result = taught
    data = chat_data(tmp_path / "new", shift=5)
    assert accuracy(result.checkpoint, shift=5)[0] <= 0.2
    cfg = finetune_config(
        result.checkpoint,
        data,
        tmp_path / "lora",
        "optimizer.learning_rate=1e-2",
        "device_train_microbatch_size=16",
        lora={"rank": 8, "alpha": 16.0},
    )
    lora = quiet(cfg)
    merged = merge_adapter(lora.run_dir, read_adapter_base(lora.run_dir), tmp_path / "merged")
    after, texts = accuracy(merged.output, shift=5)
    assert after > 0.9, texts
    assert accuracy(result.checkpoint)[0] > 0.9  # the base still answers its own task


def _upstream_base(ours, target, step=1000):
    """Our base rewritten as upstream writes `step{N}-unsharded/`: FSDP1 names in encoded safetensors
    keys, an optimizer state, and a train.pt far into a pretraining run."""
    ckpt = read_unsharded(ours)
    target.mkdir(parents=True)
    (target / "config.yaml").write_text((ours / "config.yaml").read_text())

    def fsdp(name):
        return FSDP + re.sub(r"(blocks\.\d+\.)", rf"\1{FSDP}", name)

    write_upstream_safetensors(target / "model.safetensors", {fsdp(k): v for k, v in ckpt.model.items()})
    names = sorted(fsdp(k) for k in ckpt.model)
    state = {
        n: {"step": torch.tensor(7.0), "exp_avg": torch.ones(1), "exp_avg_sq": torch.ones(1)} for n in names
    }
    groups = [{"lr": 1.0, "params": names, "param_names": names, "weight_decay": 0.1}]
    write_upstream_safetensors(target / "optim.safetensors", {"state": state, "param_groups": groups})
    trainer = {
        "epoch": 3,
        "global_step": step,
        "global_train_examples_seen_this_epoch": 1234,
        "global_train_tokens_seen": 10**9,
        "world_size": 1,
        "checkpoints": [],
        "unsharded_checkpoints": [],
        "ephemeral_checkpoints": [],
        "rng": {"torch": torch.get_rng_state()},
    }
    torch.save(trainer, target / "train.pt")
    return target


def test_finetune_from_an_upstream_layout_checkpoint_takes_its_weights_only(tmp_path, material):
    base, data = material
    upstream = _upstream_base(base, tmp_path / "up" / "step1000-unsharded")
    sets = ("stop_at=2", "global_train_batch_size=4")
    quiet(finetune_config(base, data, tmp_path / "ours", *sets))
    quiet(finetune_config(upstream, data, tmp_path / "theirs", *sets))
    ours, theirs = losses(tmp_path / "ours"), losses(tmp_path / "theirs")
    assert list(theirs) == [1, 2]  # step, data position and schedule start over
    assert theirs == ours  # the same weights, a fresh optimizer (its moments would change step 2)
    first = metrics(tmp_path / "theirs")[0]
    assert first["lr"] == pytest.approx(metrics(tmp_path / "ours")[0]["lr"])


def test_finetune_from_a_hugging_face_directory(tmp_path, material):
    base, data = material
    found = read_checkpoint(base)
    hf = export_hf(found, load_tokenizer(found), tmp_path / "hf").path
    # An HF directory carries no training settings: give the same ones as the native base's.
    sets = ("stop_at=2", "global_train_batch_size=4", "device_train_microbatch_size=4", "precision=fp32")
    sets += ("seed=6198", "data.drop_last=true")
    quiet(finetune_config(base, data, tmp_path / "native", *sets))
    cfg = finetune_config(hf, data, tmp_path / "from-hf", *sets)
    assert cfg.load_path == str(hf.resolve()) and cfg.model.d_model == found.config.model.d_model
    quiet(cfg)
    native, from_hf = losses(tmp_path / "native"), losses(tmp_path / "from-hf")
    assert list(from_hf) == [1, 2]
    for step in native:
        assert from_hf[step] == pytest.approx(native[step], abs=1e-6)


def test_a_preset_with_another_architecture_is_refused_naming_each_field(tmp_path, material):
    base, data = material
    request = FinetuneRequest(checkpoint=base, data=[str(data)], preset="tiny", save_folder=tmp_path / "r")
    with pytest.raises(ConfigError) as info:
        build_finetune_config(request)
    assert info.value.exit_code == 2
    text = str(info.value)
    assert "model.d_model: checkpoint 64, config 256" in text
    assert "model.n_layers: checkpoint 2, config 4" in text
    assert "model.n_heads" not in text  # fields that agree are not named
    # An architecture change through --set is refused the same way.
    with pytest.raises(ConfigError, match="model.n_layers: checkpoint 2, config 3"):
        finetune_config(base, data, tmp_path / "s", "model.n_layers=3")


def test_a_config_file_that_restates_the_architecture_is_used(tmp_path, material):
    base, data = material
    model = yaml.safe_load((base / "config.yaml").read_text())["model"]
    settings = {"model": model, "optimizer": {"learning_rate": 5e-4}, "global_train_batch_size": 8}
    file = tmp_path / "ft.yaml"
    file.write_text(yaml.safe_dump(settings))
    request = FinetuneRequest(checkpoint=base, data=[str(data)], config_file=file, save_folder=tmp_path / "r")
    cfg, _ = build_finetune_config(request)
    assert cfg.optimizer.learning_rate == 5e-4  # the file's own value beats the finetune default
    assert cfg.scheduler.name == "linear_with_warmup"  # what it does not set takes the default
    assert cfg.global_train_batch_size == 8


def test_finetune_defaults_and_overrides(tmp_path, material):
    base, data = material
    cfg = finetune_config(base, data, tmp_path / "r")
    steps = 2 * (len(build_dataset(cfg.data, SEQ)) // cfg.global_train_batch_size)  # max_duration 2ep
    assert (cfg.optimizer.name, cfg.optimizer.learning_rate, cfg.optimizer.weight_decay) == (
        "adamw",
        2e-5,
        0.0,
    )
    assert (cfg.scheduler.name, cfg.scheduler.alpha_f) == ("linear_with_warmup", 0.0)
    assert cfg.scheduler.t_warmup == round(WARMUP_FRACTION * steps) > 0
    assert (cfg.max_duration, cfg.stop_at, cfg.max_grad_norm) == ("2ep", steps, 1.0)
    assert (cfg.load_path, cfg.reset_trainer_state, cfg.reset_optimizer_state) == (
        str(base.resolve()),
        True,
        True,
    )
    assert cfg.global_train_batch_size == 16  # training settings come from the checkpoint's config
    assert cfg.data.paths == [str(data.resolve())]
    changed = finetune_config(
        base, data, tmp_path / "r", "optimizer.learning_rate=1e-3", "scheduler.t_warmup=7", "max_duration=30"
    )
    assert (changed.optimizer.learning_rate, changed.scheduler.t_warmup, changed.stop_at) == (1e-3, 7, 30)
    lora = finetune_config(base, data, tmp_path / "r", lora={"rank": 4})
    assert lora.optimizer.learning_rate == 1e-4 and lora.lora is not None and lora.lora.rank == 4


def test_a_pretraining_batch_is_capped_for_finetuning_unless_asked_for(tmp_path, material):
    _, data = material
    pretraining = base_config().model_copy(update={"global_train_batch_size": 2048})
    big = base_checkpoint(tmp_path / "big", cfg=pretraining)
    assert finetune_config(big, data, tmp_path / "a").global_train_batch_size == FINETUNE_MAX_GLOBAL_BATCH
    asked = finetune_config(big, data, tmp_path / "b", "global_train_batch_size=256")
    assert asked.global_train_batch_size == 256


def test_finetune_needs_data_and_its_own_folder(tmp_path, material):
    base, data = material
    with pytest.raises(UsageError, match="needs data"):
        build_finetune_config(FinetuneRequest(checkpoint=base, save_folder=tmp_path / "r"))
    with pytest.raises(ConfigError, match="base checkpoint's own run folder"):
        finetune_config(base, data, base.parent)


def test_resume_continues_a_finetune_from_its_own_checkpoint(tmp_path, material):
    base, data = material
    sets = ("max_duration=6", "global_train_batch_size=8", "save_interval=3", "optimizer.learning_rate=1e-3")
    quiet(finetune_config(base, data, tmp_path / "whole", *sets))
    split = finetune_config(base, data, tmp_path / "split", *sets, "stop_at=3")
    quiet(split)
    # What `olmo resume DIR` does: the run's config.yaml, its newest checkpoint as load_path.
    run_dir = tmp_path / "split"
    overrides = [f"save_folder={run_dir}", f"load_path={run_dir / 'step3-unsharded'}", "stop_at=6"]
    resumed = load_config(config_file=run_dir / "config.yaml", overrides=overrides).config
    assert resumed.reset_trainer_state and resumed.reset_optimizer_state  # still the finetune's config
    quiet(resumed, continuing=True)
    whole, found = losses(tmp_path / "whole"), losses(run_dir)
    assert list(found) == [1, 2, 3, 4, 5, 6]
    assert found == whole  # not restarted from the base: optimizer, schedule and data position kept
    assert all(math.isfinite(v) for v in found.values())


@pytest.mark.parametrize("name", ["2024", "on", "null", "a: b", "[x]"])
def test_save_folder_names_stay_text(tmp_path, material, name):
    base, data = material
    assert finetune_config(base, data, tmp_path / name).save_folder == str(tmp_path / name)
    assert finetune_config(base, data, Path(name)).save_folder == name
