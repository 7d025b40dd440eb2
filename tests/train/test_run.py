"""`run()`, the one training entry point, on small CPU runs: what it trains on, what it computes, what it
writes, and the user errors it reports before any weights are allocated."""

from __future__ import annotations

import functools
import json
import math
import sys
import types

import numpy as np
import pytest
import torch

import olmo_cli.data.default_corpus as default_corpus
import olmo_cli.train.prepare as prepare
from olmo_cli.config.loader import load_config
from olmo_cli.config.schema import DataConfig, EvaluatorConfig, InstanceFilterConfig, WandbConfig, as_acted_on
from olmo_cli.errors import ConfigError, DataError
from olmo_cli.model.olmo import build_model
from olmo_cli.train.callbacks.wandb_sink import wandb_mode
from olmo_cli.train.events import CheckpointSaved, EvalDone, Message, RunFinished, RunStarted, StepDone
from olmo_cli.train.prepare import DEFAULT_CORPUS_LABEL
from tests.train._runs import SEQ, losses, metrics, pattern_tokens, quiet_run, run_config, write_token_dir


def _reference_order(n: int, seed: int, epoch: int = 0) -> np.ndarray:
    # Upstream's rule written plainly: PCG64(seed + epoch) permutation of 0..N-1.
    return np.random.default_rng(seed + epoch).permutation(n)


def _instances(tmp_path) -> np.ndarray:
    tokens = np.fromfile(tmp_path / "data" / "part-00000.npy", dtype="<u2").astype(np.int64)
    return tokens[: len(tokens) // SEQ * SEQ].reshape(-1, SEQ)


def test_a_run_trains_records_and_saves(tmp_path):
    cfg = run_config(tmp_path, max_duration=6, stop_at=6)
    result, events = quiet_run(cfg)
    run_dir = tmp_path / "run"

    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    assert [e.step for e in events if isinstance(e, StepDone)] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events if isinstance(e, CheckpointSaved)] == [3, 6]
    assert result.reason == "finished" and result.step == 6

    records = metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for step, record in enumerate(records, start=1):
        assert record["throughput/total_tokens"] == step * 8 * SEQ
        assert record["train/Perplexity"] == pytest.approx(math.exp(record["train/CrossEntropyLoss"]))
        # Warmup from 10% of the peak LR (t_warmup 30 in the preset), at position t = step.
        lr0 = cfg.optimizer.learning_rate
        assert record["lr"] == pytest.approx(0.1 * lr0 + 0.9 * lr0 * step / 30)
        assert record["optim/total_grad_norm"] > 0
    # The saved config reads back as the config that ran, data paths made absolute, and the upstream
    # settings olmo does not act on written as what it does instead (sharded_checkpointer: torch_new, ...).
    saved = load_config(config_file=run_dir / "config.yaml").config
    ran = cfg.model_copy(update={"data": cfg.data.model_copy(update={"memmap_dtype": "uint16"})})
    assert saved == as_acted_on(ran)
    assert saved.sharded_checkpointer == "torch_new" and saved.save_data_indices is False
    order = np.fromfile(run_dir / "train_data" / "global_indices.npy", dtype="<u4")
    assert np.array_equal(order, _reference_order(64, cfg.seed))
    assert (run_dir / "latest-unsharded").resolve() == run_dir / "step6-unsharded"


def test_first_loss_equals_an_independent_computation(tmp_path):
    """Step 1's loss from the model as built with the run's seed and the first global batch of the order."""
    cfg = run_config(tmp_path, max_duration=1, stop_at=1)
    quiet_run(cfg)
    batch = torch.from_numpy(_instances(tmp_path)[_reference_order(64, cfg.seed)[:8]])
    model = build_model(cfg.model, "cpu", seed=cfg.seed)
    logits = model(batch).float()
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
    )
    expected = ce.item() * (SEQ - 1) / SEQ  # upstream divides the summed CE by B*L, not B*(L-1)
    assert losses(tmp_path / "run")[1] == pytest.approx(expected, rel=1e-6)


def test_the_repetition_filter_takes_repeating_instances_out_of_the_loss(tmp_path):
    """Instances with 16 copies of one id take no loss, but still count in the B*L normalizer (§3.6)."""
    tokens = pattern_tokens(64 * SEQ, seed=1).reshape(64, SEQ)
    tokens[::2] = (np.arange(32) % 50)[:, None]  # even instances: one id 16 times
    write_token_dir(tmp_path / "data", tokens.reshape(-1))
    rule = InstanceFilterConfig(repetition_max_period=13, repetition_min_period=1, repetition_max_count=16)
    cfg = run_config(tmp_path, max_duration=2, stop_at=2)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"instance_filter": rule})})
    quiet_run(cfg)
    order = _reference_order(64, cfg.seed)[:8]
    kept = torch.tensor(order % 2 == 1)
    batch = torch.from_numpy(_instances(tmp_path)[order])
    logits = build_model(cfg.model, "cpu", seed=cfg.seed)(batch).float()
    summed = torch.nn.functional.cross_entropy(
        logits[kept, :-1].reshape(-1, logits.shape[-1]), batch[kept, 1:].reshape(-1), reduction="sum"
    )
    first, second = metrics(tmp_path / "run")
    assert first["train/CrossEntropyLoss"] == pytest.approx(summed.item() / (8 * SEQ), rel=1e-6)
    assert first["train/masked_instances_local_rank"] == int((~kept).sum())
    second_order = _reference_order(64, cfg.seed)[8:16]
    assert second["train/masked_instances_local_rank"] == int((second_order % 2 == 0).sum())


def test_a_given_data_order_file_is_trained_in_and_kept_on_resume(tmp_path):
    order = np.arange(63, -1, -1, dtype="<u4")  # reversed: unlike any seeded order
    order.tofile(tmp_path / "order.u32")
    cfg = run_config(tmp_path, stop_at=3)
    quiet_run(cfg, data_order_file=str(tmp_path / "order.u32"))
    written = np.fromfile(tmp_path / "run" / "train_data" / "global_indices.npy", dtype="<u4")
    assert np.array_equal(written, order)
    model = build_model(cfg.model, "cpu", seed=cfg.seed)
    batch = torch.from_numpy(_instances(tmp_path)[order[:8].astype(np.int64)])
    logits = model(batch).float()
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
    )
    assert losses(tmp_path / "run")[1] == pytest.approx(ce.item() * (SEQ - 1) / SEQ, rel=1e-6)
    # Resuming (without naming the file again) continues in the same order: same as never stopping.
    resumed = cfg.model_copy(update={"load_path": str(tmp_path / "run" / "step3-unsharded"), "stop_at": 5})
    quiet_run(resumed, continuing=True)
    whole = run_config(tmp_path / "whole", stop_at=5)
    quiet_run(whole, data_order_file=str(tmp_path / "order.u32"))
    assert losses(tmp_path / "run") == losses(tmp_path / "whole" / "run")


def test_a_given_order_survives_the_next_epoch_for_an_older_checkpoint(tmp_path):
    """global_indices.npy is rewritten when epoch 1 begins; a checkpoint from epoch 0 still resumes in
    the given order (the run keeps its own copy of it), as a run that never stopped."""
    order = np.arange(63, -1, -1, dtype="<u4")
    order.tofile(tmp_path / "order.u32")
    cfg = run_config(tmp_path, stop_at=10, max_duration=10)  # 8 steps per epoch: epoch 1 begins at 9
    quiet_run(cfg, data_order_file=str(tmp_path / "order.u32"))
    written = np.fromfile(tmp_path / "run" / "train_data" / "global_indices.npy", dtype="<u4")
    assert not np.array_equal(written, order)  # epoch 1's own order by now
    later = cfg.model_copy(
        update={
            "save_folder": str(tmp_path / "later"),
            "load_path": str(tmp_path / "run" / "step3-unsharded"),
        }
    )
    later = later.model_copy(update={"stop_at": 5})
    quiet_run(later, continuing=True)
    whole = run_config(tmp_path / "whole", stop_at=5)
    quiet_run(whole, data_order_file=str(tmp_path / "order.u32"))
    assert {s: losses(tmp_path / "later")[s] for s in (4, 5)} == {
        s: losses(tmp_path / "whole" / "run")[s] for s in (4, 5)
    }


def test_gradient_accumulation_does_not_change_the_losses(tmp_path):
    one = run_config(tmp_path / "a", device_train_microbatch_size=8)
    four = run_config(tmp_path / "b", device_train_microbatch_size=2)
    quiet_run(one)
    quiet_run(four)
    a, b = losses(tmp_path / "a" / "run"), losses(tmp_path / "b" / "run")
    assert a.keys() == b.keys()
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-5)


def test_loss_falls_on_learnable_data(tmp_path):
    cfg = run_config(tmp_path, max_duration=30, stop_at=30, save_interval=None)
    result, _ = quiet_run(cfg)
    assert result.last_loss < 0.8 * result.first_loss


def test_in_loop_eval_on_validation_files(tmp_path):
    val_dir = write_token_dir(tmp_path / "val", pattern_tokens(20 * SEQ, seed=7))
    evaluator = EvaluatorConfig(label="held-out", data=DataConfig(paths=[str(val_dir)], drop_last=False))
    cfg = run_config(tmp_path, eval_interval=2, max_duration=5, stop_at=5, evaluators=[evaluator])
    _, events = quiet_run(cfg)
    evals = {e.step: e.metrics for e in events if isinstance(e, EvalDone)}
    assert sorted(evals) == [2, 4, 5]  # every eval_interval, and after the last step
    key = "eval/held-out/CrossEntropyLoss"
    by_step = {r["step"]: r for r in metrics(tmp_path / "run")}
    for step, found in evals.items():
        assert by_step[step][key] == found[key]
        assert by_step[step]["eval/held-out/Perplexity"] == pytest.approx(math.exp(found[key]))
    assert key not in by_step[1]


def test_epochs_reshuffle_and_stop_when_the_data_ends(tmp_path):
    # 64 instances, batch 8: 8 steps per epoch; 2 epochs. Without stop_at upstream would go 10 steps
    # further, but the data of the last epoch ends first.
    cfg = run_config(tmp_path, max_duration="2ep", stop_at=None, save_interval=None)
    result, events = quiet_run(cfg)
    assert result.reason == "data_exhausted" and result.step == 16
    assert any(isinstance(e, Message) and "epoch 1" in e.text for e in events)
    # ... and that was said at the start, from the data's size, not discovered at the end.
    started = next(i for i, e in enumerate(events) if isinstance(e, StepDone))
    said = [e.text for e in events[:started] if isinstance(e, Message) and e.level == "warning"]
    assert said == [
        "the data runs out after step 16, before the stop step 26: 8 batches per epoch \u00d7 2 epochs, "
        "so the run will end there (give more data, or --set stop_at=16 to make that the planned end)"
    ]
    from olmo_cli.train.plan import make_plan

    assert make_plan(cfg, world_size=1, dataset_instances=64).data_runs_out == said[0]
    assert make_plan(cfg, world_size=1, dataset_instances=72).data_runs_out is not None  # 9 x 2 < 28
    assert (
        make_plan(cfg.model_copy(update={"stop_at": 16}), world_size=1, dataset_instances=64).data_runs_out
        is None
    )
    order = np.fromfile(tmp_path / "run" / "train_data" / "global_indices.npy", dtype="<u4")
    assert np.array_equal(order, _reference_order(64, cfg.seed, epoch=1))


def test_default_corpus_when_no_data_is_given(tmp_path, monkeypatch):
    stdlib = tmp_path / "lib"
    stdlib.mkdir()
    for i in range(60):
        body = " ".join(f"word{j}" for j in range(i, i + 40))
        (stdlib / f"mod{i:03d}.py").write_text(
            f'"""Module {i}: {body}."""\n\ndef f{i}():\n    """{body}"""\n'
        )
    real = default_corpus.default_corpus_data
    monkeypatch.setattr(default_corpus, "default_corpus_data", functools.partial(real, root=stdlib))
    cfg = run_config(tmp_path, data=DataConfig(drop_last=True), global_train_batch_size=4, max_duration=2)
    cfg = cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"vocab_size": 4096, "embedding_size": 4096})}
    )
    _, events = quiet_run(cfg, corpus_cache_dir=tmp_path / "cache")
    assert any(isinstance(e, Message) and "default corpus" in e.text for e in events)
    saved = load_config(config_file=tmp_path / "run" / "config.yaml").config
    assert saved.data.paths and all(str(tmp_path / "cache") in p for p in saved.data.paths)
    assert [ev.label for ev in saved.evaluators] == [DEFAULT_CORPUS_LABEL]
    final = metrics(tmp_path / "run")[-1]
    assert f"eval/{DEFAULT_CORPUS_LABEL}/CrossEntropyLoss" in final


# ---- user errors, before any weights are allocated -------------------------------------------------


def test_missing_data_is_a_data_error(tmp_path):
    cfg = run_config(tmp_path)
    with pytest.raises(DataError, match="not found") as info:
        quiet_run(cfg, data=[str(tmp_path / "nowhere")])
    assert info.value.hint


def test_token_ids_beyond_the_vocabulary_are_a_data_error(tmp_path):
    write_token_dir(tmp_path / "data", (np.arange(64 * SEQ) % 100).astype(np.uint16))  # ids up to 99 >= 60
    with pytest.raises(DataError, match="token id 99") as info:
        quiet_run(run_config(tmp_path))
    assert "tokenizer" in info.value.hint
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_data_too_large_to_scan_is_checked_batch_by_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "SCAN_MAX_TOKENS", 0)
    write_token_dir(tmp_path / "data", (np.arange(64 * SEQ) % 100).astype(np.uint16))
    with pytest.raises(DataError, match="token id 99"):
        quiet_run(run_config(tmp_path))
    assert (tmp_path / "run" / "config.yaml").is_file()  # it got as far as the first batch


def test_too_little_data_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="fewer than one global batch"):
        quiet_run(run_config(tmp_path, instances=4))


def test_the_corrected_retry_of_a_run_that_never_reached_a_checkpoint_takes_its_folder(tmp_path):
    failed = run_config(tmp_path / "a", instances=4)  # fewer instances than one batch
    with pytest.raises(DataError, match="fewer than one global batch"):
        quiet_run(failed.model_copy(update={"save_folder": str(tmp_path / "run")}))
    assert [p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith(".")] == ["config.yaml"]
    fixed = run_config(tmp_path / "b", max_duration=3, stop_at=3)
    result, events = quiet_run(fixed.model_copy(update={"save_folder": str(tmp_path / "run")}))
    assert result.step == 3
    notices = [e.text for e in events if isinstance(e, Message) and "never reached a checkpoint" in e.text]
    assert len(notices) == 1, notices
    assert "b/data" in (tmp_path / "run" / "config.yaml").read_text()


def test_the_config_a_run_writes_reads_back_without_reports_of_what_olmo_wrote(tmp_path):
    # Upstream's defaults for settings olmo does not act on (sharded_checkpointer: torch_legacy,
    # save_data_indices: true, extra_steps_after_cancel: 10) are written as what olmo does instead.
    quiet_run(run_config(tmp_path, max_duration=1, stop_at=1))
    saved = tmp_path / "run" / "config.yaml"
    text = saved.read_text()
    assert "sharded_checkpointer: torch_new" in text and "save_data_indices: false" in text
    assert load_config(config_file=saved).ignored == []
    asked = load_config(config_file=saved, overrides=["extra_steps_after_cancel=3"])
    assert [item.path for item in asked.ignored] == ["extra_steps_after_cancel"]  # the user's own value


def test_indivisible_batch_sizes_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="device_train_microbatch_size") as info:
        quiet_run(run_config(tmp_path, device_train_microbatch_size=3))
    assert "--set device_train_microbatch_size=" in info.value.hint


def test_a_folder_with_another_run_is_refused_unless_overwriting(tmp_path):
    quiet_run(run_config(tmp_path, max_duration=3, stop_at=3))
    other = run_config(tmp_path, max_duration=4, stop_at=4)
    with pytest.raises(ConfigError, match="already holds a run") as info:
        quiet_run(other)
    assert "olmo resume" in info.value.hint
    result, _ = quiet_run(other.model_copy(update={"save_overwrite": True}))
    assert result.step == 4
    names = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("step"))
    assert names == ["step3-unsharded", "step4-unsharded"]  # step3 saved again by the new run
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2, 3, 4]


# ---- wandb ------------------------------------------------------------------------------------------


class _FakeRun:
    def __init__(self, kwargs):
        self.kwargs, self.logged, self.finished, self.id = kwargs, [], False, "run123"

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []

    def init(**kwargs):
        runs.append(_FakeRun(kwargs))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    return runs


def test_wandb_gets_the_metrics_offline_without_a_key(tmp_path, monkeypatch, fake_wandb):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = run_config(tmp_path, wandb=WandbConfig(project="p", log_interval=2), max_duration=4, stop_at=4)
    quiet_run(cfg)
    (run,) = fake_wandb
    assert run.kwargs["mode"] == "offline" and run.kwargs["project"] == "p"
    assert [step for step, _ in run.logged] == [2, 4]
    by_step = {r["step"]: r for r in metrics(tmp_path / "run")}
    assert run.logged[0][1]["train/CrossEntropyLoss"] == by_step[2]["train/CrossEntropyLoss"]
    assert run.finished


def test_no_wandb_option_turns_it_off(tmp_path, fake_wandb):
    cfg = run_config(tmp_path, wandb=WandbConfig(project="p"), max_duration=2, stop_at=2)
    quiet_run(cfg, wandb=False)
    assert fake_wandb == []


def test_wandb_mode_follows_the_configured_key(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    assert wandb_mode({"NETRC": str(tmp_path / "none")}) == "offline"
    assert wandb_mode({"WANDB_API_KEY": "k", "NETRC": str(tmp_path / "none")}) == "online"
    assert wandb_mode({"NETRC": str(netrc)}) == "online"
    assert wandb_mode({"WANDB_MODE": "disabled", "WANDB_API_KEY": "k"}) == "disabled"


def test_events_serialize_to_json(tmp_path):
    _, events = quiet_run(run_config(tmp_path, max_duration=2, stop_at=2))
    lines = [json.loads(json.dumps(e.as_dict(), default=str)) for e in events]
    assert lines[0]["event"] == "run_started" and lines[-1]["event"] == "run_finished"
    assert lines[0]["plan"]["params"] > 0


def test_a_signal_while_the_run_prepares_stops_it_at_the_first_step_boundary(tmp_path, monkeypatch):
    # Under --nproc-per-node a relayed SIGTERM may reach a rank that is still preparing; it must be a
    # stop request there too (not the default action, which kills that rank while the others save).
    import os
    import signal

    from olmo_cli.train import run as run_module

    real = run_module._prepare

    def prepare_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # a first Ctrl-C: a stop request, as SIGTERM
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "_prepare", prepare_then_signal)
    try:
        result, _ = quiet_run(run_config(tmp_path, stop_at=5))
    except KeyboardInterrupt:
        pytest.fail("the signal reached Python's default handler: no stop handler while preparing")
    assert result.reason == "interrupted" and result.step == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored afterwards
