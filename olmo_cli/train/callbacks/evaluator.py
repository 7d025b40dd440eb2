"""In-loop evaluation every `eval_interval` steps and after the last step: perplexity (docs/format.md §9.1,
`eval/{label}/CrossEntropyLoss` and `eval/{label}/Perplexity`) and downstream tasks (§9.2,
`eval/downstream/{label}_{metric}`, see olmo_cli/eval/in_loop.py) join that step's metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from olmo_cli.data.dataset import MemmapDataset
from olmo_cli.train.callbacks.base import Callback
from olmo_cli.train.events import EvalDone, EventSink

if TYPE_CHECKING:
    from olmo_cli.train.loop import Trainer

__all__ = ["EvalSet", "Evaluator"]


@dataclass(frozen=True)
class EvalSet:
    label: str
    dataset: MemmapDataset
    batch_size: int
    max_batches: int | None  # None: every batch
    drop_last: bool = True


class Evaluator(Callback):
    name = "evaluator"

    def __init__(
        self, sets: list[EvalSet], interval: int, events: EventSink, tasks: list[Any] | None = None
    ) -> None:
        self.sets = sets
        self.tasks = tasks or []  # olmo_cli.eval.in_loop.TaskSet: downstream evaluators
        self.interval = interval
        self.events = events
        self.last_step: int | None = None

    def on_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        step = trainer.state.global_step
        if (
            (self.sets or self.tasks)
            and (step % self.interval == 0 or trainer.is_final_step)
            and step != self.last_step
        ):
            metrics.update(self.evaluate(trainer))

    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        from olmo_cli.eval.perplexity import evaluate_perplexity

        started = time.perf_counter()
        was_training = trainer.model.training
        results: dict[str, float] = {}
        try:
            for eval_set in self.sets:
                found = evaluate_perplexity(
                    trainer.model,
                    eval_set.dataset,
                    batch_size=eval_set.batch_size,
                    world=trainer.world,
                    autocast_dtype=trainer.autocast,
                    seed=trainer.cfg.data.seed if trainer.cfg.data.seed is not None else trainer.cfg.seed,
                    max_batches=eval_set.max_batches,
                    drop_last=eval_set.drop_last,
                )
                for name, value in found.items():
                    # Per-label results ("label/CrossEntropyLoss", data.datasets) are named by their
                    # label, as upstream names them; the whole set by the evaluator's label.
                    key = f"eval/{name}" if "/" in name else f"eval/{eval_set.label}/{name}"
                    results[key] = float(value)
            for task_set in self.tasks:
                from olmo_cli.eval.in_loop import run_task_set

                world = trainer.world
                found = run_task_set(
                    trainer.model,
                    task_set,
                    rank=world.rank,
                    world_size=world.world_size,
                    autocast_dtype=trainer.autocast,
                )
                results.update(found)
        finally:
            trainer.model.train(was_training)
        self.last_step = trainer.state.global_step
        trainer.speed.reset()  # the evaluation's time must not count as a slow training step
        if trainer.world.is_main:
            self.events(EvalDone(trainer.state.global_step, results, time.perf_counter() - started))
        return results
