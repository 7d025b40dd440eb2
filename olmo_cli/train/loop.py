"""The training loop: optimizer steps and nothing else (docs/architecture.md rule 13).

Each step follows upstream's order (docs/format.md §6.6): counters first (so the schedule sees position
t on step t), zero the gradients, forward/backward every micro-batch under autocast, average the loss
over ranks, clip with last step's threshold, set this step's LR, step the optimizer. Then the callbacks
run: checkpoints, evaluation, metric sinks. The loop stops at the stop step, when the data of the last
epoch runs out, or at a step boundary after SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from olmo_cli.config.precision import autocast_dtype
from olmo_cli.config.schema import TrainConfig
from olmo_cli.errors import DataError
from olmo_cli.model.loss import check_finite, cross_entropy_loss
from olmo_cli.train.callbacks.base import CallbackList
from olmo_cli.train.duration import scheduler_position
from olmo_cli.train.events import EventSink, Message
from olmo_cli.train.loader import BatchLoader, DeviceBatch
from olmo_cli.train.optim import clip_and_step
from olmo_cli.train.parallelize import microbatch_sync
from olmo_cli.train.schedule import BoltOnWarmup, grad_clip_threshold_at, lr_at
from olmo_cli.train.signals import StopRequest
from olmo_cli.train.speed import SpeedMonitor
from olmo_cli.train.state import TrainerState
from olmo_cli.world import World, all_reduce_sum

__all__ = ["Schedule", "StopReason", "Trainer"]

StopReason = Literal["finished", "data_exhausted", "interrupted"]


@dataclass(frozen=True)
class Schedule:
    """Where this invocation of the loop ends and how the LR is computed, fixed when training starts."""

    max_position: int  # the run maximum in the scheduler's units (the decay horizon)
    stop_step: int  # the step training stops after
    max_epochs: int  # epochs the data may run through
    bolt_on: BoltOnWarmup | None = None  # a fresh warmup after reset_optimizer_state
    stop_reason: str = ""  # why training stops at stop_step, in words

    def lr(self, cfg: TrainConfig, position: int) -> float:
        lr0 = cfg.optimizer.learning_rate
        if self.bolt_on is not None:
            return self.bolt_on.lr_at(position, cfg.scheduler, lr0, self.max_position)
        return lr_at(position, cfg.scheduler, lr0, self.max_position)


class Trainer:
    """Steps `model` with `optim` on the loader's batches until the schedule says stop."""

    def __init__(
        self,
        *,
        cfg: TrainConfig,
        world: World,
        model: nn.Module,
        optim: torch.optim.Optimizer,
        loader: BatchLoader,
        state: TrainerState,
        schedule: Schedule,
        callbacks: CallbackList,
        speed: SpeedMonitor,
        run_dir: Path,
        events: EventSink,
        stop: StopRequest | None = None,
    ) -> None:
        self.cfg = cfg
        self.world = world
        self.model = model
        self.optim = optim
        self.loader = loader
        self.state = state
        self.schedule = schedule
        self.callbacks = callbacks
        self.speed = speed
        self.run_dir = run_dir
        self.events = events
        self.stop = stop or StopRequest()
        self.autocast = autocast_dtype(cfg)
        self.is_final_step = False
        # Whether the data was too large to check before training: then every batch is checked on all
        # ranks together (one small all-reduce per step).
        self.check_every_batch = True
        self.start_step = state.global_step
        self.started_at = time.perf_counter()
        self.first_loss: float | None = None
        self.last_loss: float | None = None

    # ---- the loop ---------------------------------------------------------------------------------

    def fit(self) -> StopReason:
        """Trains until the stop step, the end of the data, or a stop request; returns why it stopped."""
        self.started_at = time.perf_counter()
        try:
            self.callbacks.on_start(self)
            gc_interval = self.cfg.gen1_gc_interval
            if gc_interval:
                gc.disable()  # upstream collects generation 1 on a schedule instead of whenever Python likes
            try:
                reason = self._loop(gc_interval)
            finally:
                if gc_interval:
                    gc.enable()
            self.callbacks.on_end(self, reason)
        except Exception as error:
            self.callbacks.on_error(self, error)
            raise
        return reason

    def _loop(self, gc_interval: int | None) -> StopReason:
        cfg, state = self.cfg, self.state
        while True:
            if state.global_step >= self.schedule.stop_step:
                return "finished"
            if self.stop.requested and not self.world.is_distributed:
                return "interrupted"  # several ranks agree on stopping through the loss all-reduce instead
            if not self._next_epoch_if_needed():
                return "data_exhausted"
            started = time.perf_counter()
            batch = self.loader.device_batch(state.epoch, state.examples_seen)
            self._raise_if_any_rank_has_bad_data(batch)
            state.global_step += 1
            state.examples_seen += cfg.global_train_batch_size
            state.tokens_seen += cfg.tokens_per_step
            metrics, stop_requested = self.train_step(batch)
            seconds = time.perf_counter() - started
            speed = self.speed.update(batch.input_ids.numel(), seconds)
            if speed is not None:
                metrics.update(speed.as_metrics())
            self.is_final_step = state.global_step >= self.schedule.stop_step or not self._data_left()
            self.callbacks.on_step(self, metrics)
            self.callbacks.on_log(self, metrics)
            if gc_interval and state.global_step % gc_interval == 0:
                gc.collect(1)
            if cfg.time_limit is not None and time.perf_counter() - self.started_at >= cfg.time_limit:
                self.stop.request("time_limit")  # saved and stopped like SIGTERM, at the next boundary
            if stop_requested:
                return "interrupted"

    def _data_left(self) -> bool:
        state = self.state
        if self.loader.has_batch(state.epoch, state.examples_seen):
            return True
        # Every epoch has the same number of batches: only the epoch budget decides.
        return state.epoch + 1 < self.schedule.max_epochs and self.loader.batches_in_epoch(state.epoch) > 0

    def _next_epoch_if_needed(self) -> bool:
        """Moves to the next epoch when this one has no whole batch left; False when no data is left."""
        state = self.state
        if self.loader.has_batch(state.epoch, state.examples_seen):
            return True
        if not self._data_left():
            return False
        state.epoch += 1
        state.examples_seen = 0
        if self.world.is_main:
            self.loader.write_order(state.epoch, self.run_dir)
            self.events(Message(f"epoch {state.epoch} begins: the data is reshuffled"))
        return self.loader.has_batch(state.epoch, state.examples_seen)

    def _raise_if_any_rank_has_bad_data(self, batch: DeviceBatch) -> None:
        """Raises the batch's DataError, on every rank if any rank's share is bad.

        Data small enough is checked before training (prepare.check_data); for larger data a bad id is
        found here, and one rank raising alone would leave the others waiting in a collective forever.
        """
        if self.world.is_distributed and self.check_every_batch:
            flag = torch.tensor([0.0 if batch.problem is None else 1.0], device=self.world.device)
            if float(all_reduce_sum(flag, self.world)[0]) > 0 and batch.problem is None:
                raise DataError("another rank found bad data in this step's batch (see its error)")
        if batch.problem is not None:
            raise batch.problem

    # ---- one step ---------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.world.device.type, dtype=self.autocast)

    def train_step(self, batch: DeviceBatch) -> tuple[dict[str, float], bool]:
        """Forward/backward over the micro-batches, loss averaged over ranks, clip, LR, optimizer step.

        Returns the step's metrics and whether any rank was asked to stop (agreed on by all ranks in the
        same all-reduce as the loss, so they all stop after the same step).
        """
        cfg, device = self.cfg, self.world.device
        micro_batches = batch.split(cfg.device_train_microbatch_size)
        # Upstream divides every micro-batch's summed loss by the device batch's token count, so the
        # gradient does not depend on how the batch is split.
        normalize_by = batch.input_ids.numel()
        z_loss = cfg.softmax_auxiliary_loss
        sums = torch.zeros(3, dtype=torch.float32, device=device)  # CE, z-loss, stop flag
        self.optim.zero_grad(set_to_none=True)
        for index, micro in enumerate(micro_batches):
            micro = micro.to(device)
            microbatch_sync(self.model, index == len(micro_batches) - 1)
            with self._autocast():
                logits = self.model(micro.input_ids)
                parts = cross_entropy_loss(
                    logits,
                    micro.input_ids,
                    micro.label_mask,
                    instance_mask=micro.instance_mask,
                    z_loss=z_loss,
                    normalize_by=normalize_by,
                    raise_on_non_finite=False,
                )
            del logits
            parts.loss.backward()
            sums[0] += parts.ce_loss.detach().float()
            if parts.z_loss is not None:
                sums[1] += parts.z_loss.detach().float()
        sums[2] = float(self.stop.requested)
        all_reduce_sum(sums, self.world)
        ce_loss, z = sums[0] / self.world.world_size, sums[1] / self.world.world_size
        check_finite(ce_loss, z if z_loss else None)
        grad_norm, lr = self._optimizer_step()
        metrics = self._metrics(float(ce_loss), float(z) if z_loss else None, grad_norm, lr)
        if batch.instance_mask is not None:
            metrics["train/masked_instances_local_rank"] = float((~batch.instance_mask).sum())
        return metrics, bool(sums[2] > 0)

    def _optimizer_step(self) -> tuple[float, float]:
        cfg, state = self.cfg, self.state
        position = scheduler_position(cfg, state.global_step, state.tokens_seen)
        lr = self.schedule.lr(cfg, position)
        clip = grad_clip_threshold_at(position, cfg.scheduler, cfg.max_grad_norm)
        norm = clip_and_step(self.optim, lr=lr, max_grad_norm=clip)
        return float(norm), lr

    def _metrics(self, ce: float, z: float | None, grad_norm: float, lr: float) -> dict[str, float]:
        if self.first_loss is None:
            self.first_loss = ce
        self.last_loss = ce
        tokens = self.state.tokens_seen
        gflops = self.speed.flops_per_token * tokens / 1e9
        metrics = {
            "train/CrossEntropyLoss": ce,
            "train/Perplexity": math.exp(min(ce, 700.0)),
            "optim/total_grad_norm": grad_norm,
            "throughput/total_tokens": float(tokens),
            "throughput/total_training_Gflops": gflops,
            "throughput/total_training_log_Gflops": math.log(gflops) if gflops > 0 else 0.0,
        }
        if z is not None:
            metrics["train/ZLoss"] = z
        for index, group in enumerate(self.optim.param_groups):
            metrics[f"optim/learning_rate_group{index}"] = float(group["lr"])
        if self.world.device.type == "cuda" and (
            self.state.global_step < 3 or self.state.global_step % 10 == 0
        ):
            metrics["System/Peak GPU Memory (MB)"] = (
                torch.cuda.max_memory_allocated(self.world.device) / 2**20
            )
        return metrics

    # ---- what a checkpoint holds of the trainer --------------------------------------------------

    def train_pt(self) -> dict[str, Any]:
        """The trainer state for `train.pt`: upstream's keys, RNG, and every callback's state."""
        out = self.state.as_train_pt(self.world.world_size)
        out.update(self.callbacks.train_pt_entries(self))
        out["callbacks"] = self.callbacks.state_dict()
        return out

    @property
    def seconds_per_step(self) -> float | None:
        """Wall time per step of this invocation so far, checkpoints and evaluations included."""
        done = self.state.global_step - self.start_step
        return (time.perf_counter() - self.started_at) / done if done > 0 else None
