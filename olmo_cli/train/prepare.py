"""Before training: decide the data, check it, and claim the run directory.

The data a run trains on is written into its config (docs/architecture.md rule 3): `--data` items and
the default corpus's token directories become `data.paths` (absolute), and the default corpus's
validation split becomes an evaluator, so `config.yaml` in the run directory says exactly what was read
and `olmo resume` or `olmo inspect-batch --run` read the same.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from olmo_cli.checkpoint.layout import find_latest_checkpoint, parse_step
from olmo_cli.config.schema import DataConfig, EvaluatorConfig, TrainConfig
from olmo_cli.config.yamlio import dump_config
from olmo_cli.data.dataset import MemmapDataset
from olmo_cli.data.paths import expand_data_paths, is_url
from olmo_cli.data.summary import check_vocab
from olmo_cli.dirlock import DirectoryLock, lock_run_dir
from olmo_cli.errors import ConfigError, DataError, OlmoError
from olmo_cli.train.events import DataProgress, EventSink, Message
from olmo_cli.world import World, broadcast_object

__all__ = [
    "DEFAULT_CORPUS_LABEL",
    "check_data",
    "claim_run_dir",
    "config_yaml",
    "on_main",
    "release_run_dirs",
    "resolve_data",
]

DEFAULT_CORPUS_LABEL = "default-corpus-validation"
# Up to this many tokens the data is scanned for its largest id before training (a fraction of a second
# per 1e8 tokens); beyond it each batch is checked as it is read.
SCAN_MAX_TOKENS = 1 << 28
_SCAN_CHUNK = 1 << 23
_RUN_FILES = ("metrics.jsonl", "latest", "latest-unsharded")

T = TypeVar("T")


def on_main(world: World, fn: Callable[[], T]) -> T:
    """Runs `fn` on the main rank and hands its result, or its OlmoError, to every rank: a user error
    found on rank 0 stops all ranks instead of leaving them waiting at the next collective."""
    result: Any = None
    if world.is_main:
        try:
            result = ("ok", fn())
        except OlmoError as e:
            result = ("error", e)
    result = broadcast_object(result, world)
    if result[0] == "error":
        error = result[1]
        if not world.is_main:
            error.shown_by_main_rank = True  # one message for the job: app.py lets rank 0 show it
        raise error
    return result[1]


def config_yaml(cfg: TrainConfig) -> str:
    """The config as saved in the run directory and every checkpoint (all fields, resolved; upstream
    settings olmo does not act on recorded as what it does, so reading the file back warns of nothing
    olmo wrote itself)."""
    return dump_config(cfg)


# ---- which data --------------------------------------------------------------------------------------


def _absolute(item: str) -> str:
    return item if is_url(item) else str(Path(item).expanduser().resolve())


def _manifest_dtype(items: Sequence[str]) -> str | None:
    """The token dtype the items' manifests agree on (None when they have none or disagree)."""
    dtypes = {f.manifest.dtype for f in expand_data_paths(items) if f.manifest is not None}
    return dtypes.pop() if len(dtypes) == 1 else None


def _with_paths(data: DataConfig, items: list[str]) -> DataConfig:
    update: dict[str, Any] = {"paths": items, "datasets": None, "label_mask_paths": None}
    dtype = _manifest_dtype(items)
    if dtype is not None:
        update["memmap_dtype"] = dtype
    return data.model_copy(update=update)


def resolve_data(
    cfg: TrainConfig,
    data_items: Sequence[str] | None,
    events: EventSink,
    *,
    corpus_cache_dir: Path | None = None,
) -> tuple[TrainConfig, str]:
    """The config with its training data settled, and a description of that data for the user."""
    if data_items:
        items = [_absolute(str(i)) for i in data_items]
        shown = ", ".join(data_items) if len(items) <= 3 else f"{len(items)} paths"
        return cfg.model_copy(update={"data": _with_paths(cfg.data, items)}), f"--data {shown}"
    if cfg.data.paths or cfg.data.datasets:
        count = len(cfg.data.paths or []) or sum(len(v) for v in (cfg.data.datasets or {}).values())
        return cfg, f"data.paths ({count} item{'s' if count != 1 else ''})"
    return _default_corpus(cfg, events, corpus_cache_dir)


def _default_corpus(cfg: TrainConfig, events: EventSink, cache_dir: Path | None) -> tuple[TrainConfig, str]:
    from olmo_cli.data.default_corpus import default_corpus_data

    tokenizer = cfg.tokenizer.identifier
    events(
        Message(
            "no training data given (--data or data.paths): training on the default corpus, the Python "
            f"standard library's documentation and source, tokenized with {tokenizer} (cached after the "
            "first run)"
        )
    )

    def progress(p: Any) -> None:
        events(DataProgress("tokenizing the default corpus", p.bytes_done, p.bytes_total or None))

    def files(split: str) -> list[str]:
        found = default_corpus_data(
            tokenizer,
            eos_token_id=cfg.model.eos_token_id,
            split=split,  # type: ignore[arg-type]
            progress=progress,
            cache_dir=cache_dir,
        )
        # Their directory, not the files: its manifest gives the dtype, as for `olmo data tokenize` output.
        return sorted({str(Path(f).parent.resolve()) for f in found})

    train, validation = files("train"), files("validation")
    update: dict[str, Any] = {"data": _with_paths(cfg.data, train)}
    if not cfg.evaluators:
        data = _with_paths(DataConfig(drop_last=False), validation)
        update["evaluators"] = [EvaluatorConfig(label=DEFAULT_CORPUS_LABEL, data=data)]
    return cfg.model_copy(update=update), "the default corpus (Python standard library text)"


# ---- checks ------------------------------------------------------------------------------------------


def _scan_max_id(dataset: MemmapDataset) -> int | None:
    largest: int | None = None
    for file_index, tokens in enumerate(dataset.file_tokens):
        for start in range(0, int(tokens), _SCAN_CHUNK):
            chunk = dataset.read_tokens(file_index, start, min(_SCAN_CHUNK, int(tokens) - start))
            if len(chunk):
                value = int(chunk.max())
                largest = value if largest is None else max(largest, value)
    return largest


def check_data(dataset: MemmapDataset, cfg: TrainConfig, world_size: int) -> bool:
    """User errors in the data, found before any weights are allocated: too little data for one
    batch, and (for data small enough to scan) token ids the model's vocabulary does not have.
    Returns whether every token id was checked."""
    batch = cfg.global_train_batch_size
    from olmo_cli.data.order import total_size

    usable = total_size(len(dataset), world_size, cfg.data.drop_last) if len(dataset) else 0
    if usable < batch:
        raise DataError(
            f"the data has {len(dataset):,} instances of {cfg.model.max_sequence_length} tokens "
            f"({dataset.total_tokens:,} tokens), fewer than one global batch of {batch}",
            hint="give more data, or a smaller global_train_batch_size or max_sequence_length",
        )
    local = not any(is_url(p) for p in dataset.paths)
    if not (local and dataset.total_tokens <= SCAN_MAX_TOKENS):
        return False
    largest = _scan_max_id(dataset)
    if largest is not None:
        check_vocab(largest, cfg.model.vocab_size)
    return True


# ---- the run directory -------------------------------------------------------------------------------


def _checkpoints(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if parse_step(p.name) is not None and p.is_dir()]


# The locks claim_run_dir took in this process, given up by release_run_dirs when the run ends.
_claimed: list[DirectoryLock] = []


def claim_run_dir(cfg: TrainConfig, text: str, *, continuing: bool, events: EventSink) -> Path:
    """Locks `save_folder` for this run, checks that it may hold the run, then writes its config.yaml
    (main rank only). The lock is held until `release_run_dirs()`.

    A fresh run refuses a folder that holds another run (a different config.yaml, or checkpoints) unless
    `save_overwrite`, which first removes the old run's checkpoints, pointers and metrics. A run that
    continues from a checkpoint in this folder (`olmo resume`) replaces config.yaml with its own.
    """
    run_dir = Path(cfg.save_folder)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"save_folder {run_dir} is a file", hint="--save-folder DIR names a directory")
    lock = lock_run_dir(run_dir)
    try:
        _check_and_write(cfg, run_dir, text, continuing=continuing, events=events)
    except BaseException:
        lock.release()
        raise
    _claimed.append(lock)
    if lock.recovered is not None:
        events(Message(f"took over the lock of a job that has ended: {lock.recovered.describe(held=False)}"))
    if lock.unsupported:
        events(
            Message(
                f"{run_dir}'s file system cannot lock files: a second job writing here would not be noticed",
                level="warning",
            )
        )
    return run_dir


def release_run_dirs() -> None:
    """Gives up the run directories claim_run_dir locked in this process (at the end of a run)."""
    while _claimed:
        _claimed.pop().release()


def _check_and_write(
    cfg: TrainConfig, run_dir: Path, text: str, *, continuing: bool, events: EventSink
) -> None:
    from olmo_cli.atomic import atomic_write_text

    saved = run_dir / "config.yaml"
    if not continuing and run_dir.is_dir():
        existing = _checkpoints(run_dir)
        other = saved.is_file() and saved.read_text(encoding="utf-8") != text
        if other and not existing:
            # A run that never reached a checkpoint (data smaller than a batch, ids outside the
            # vocabulary, ...): nothing in it can be resumed, so its corrected retry takes the folder.
            _remove_old_run(run_dir, [])
            events(
                Message(
                    f"{run_dir} held a run that never reached a checkpoint; starting this one in its place"
                )
            )
        elif existing and not cfg.save_overwrite:
            latest = find_latest_checkpoint(run_dir)
            if latest is not None:
                what = f"checkpoints up to {latest.name}"
                hint = f"`olmo resume {run_dir}` continues it; "
            else:
                what = "checkpoint directories, none of them complete"
                hint = ""
            raise ConfigError(
                f"{run_dir} already holds a run ({what})",
                hint=f"{hint}--save-folder DIR starts a new run elsewhere; --set save_overwrite=true "
                "replaces it",
            )
        if existing and cfg.save_overwrite:
            _remove_old_run(run_dir, existing)
            events(Message(f"save_overwrite: removed {len(existing)} checkpoint(s) of the previous run"))
    atomic_write_text(saved, text)


def _remove_old_run(run_dir: Path, checkpoints: list[Path]) -> None:
    for name in _RUN_FILES:
        path = run_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()
    for path in checkpoints:
        doomed = path.with_name(f".{path.name}.deleting-{os.getpid():x}")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
