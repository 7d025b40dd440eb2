"""Sharded checkpoints through torch.distributed.checkpoint (DCP), in the layout of docs/format.md §4.6:

    step{N}/model_and_optim/     DCP files (`.metadata` + one `.distcp` per rank): model and AdamW moments
    step{N}/optim_groups.json    the optimizer's param-group hyper-parameters (plain data)
    step{N}/train/rank{R}.pt     each rank's trainer state (torch.save; read with weights_only=True)
    step{N}/config.yaml

DCP stores each tensor as global shape plus chunks, so a checkpoint written by N processes loads into M
(one included): every rank reads the parts of the file that overlap its own shards. State dicts are
keyed by upstream parameter names (wrapper prefixes removed), so FSDP, compile or activation
checkpointing on either side does not matter.

Safety: DCP reads `.metadata` with a plain `pickle.load` and non-tensor entries with
`torch.load(weights_only=False)`. A checkpoint may come from elsewhere, so here the metadata is read by
an unpickler that admits only DCP's own metadata classes (`dcp_safe`), and non-tensor entries are never
stored nor loaded.

The directory is written as `step{N}-tmp` and renamed into place by rank 0 once every rank has finished,
so a directory under the final name is always complete, even after kill -9 in the middle of a save.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from olmo_cli.atomic import disk_full_error, fsync_dir, is_disk_full
from olmo_cli.checkpoint._files import fsync_file
from olmo_cli.checkpoint.dcp_safe import SafeLoadPlanner, SafeReader
from olmo_cli.checkpoint.layout import CONFIG_FILE, SHARDED_MODEL_DIR, SHARDED_TRAIN_DIR
from olmo_cli.checkpoint.optim_state import OLMO_GROUP_FIELDS
from olmo_cli.checkpoint.safe_pickle import check_plain, load_trainer_pickle
from olmo_cli.checkpoint.trainer_state import batch_geometry, normalize_trainer_state
from olmo_cli.checkpoint.unsharded import TMP_SUFFIX, _check_trainer_state, _move_into_place
from olmo_cli.errors import CheckpointError, OlmoError
from olmo_cli.model.state_dict import clean_param_name
from olmo_cli.world import World, all_reduce_sum, barrier, broadcast_object

__all__ = ["MODEL_AND_OPTIM", "OPTIM_GROUPS", "read_sharded", "write_sharded"]

MODEL_AND_OPTIM = SHARDED_MODEL_DIR
OPTIM_GROUPS = "optim_groups.json"
TRAIN = SHARDED_TRAIN_DIR
# AdamW's per-parameter state (max_exp_avg_sq only with amsgrad).
_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
# Group keys kept from the live optimizer on load: how torch runs here, what the config and schedule say
# now (lr, weight decay; §4.7), and upstream's own fields.
_LIVE_KEYS = (
    "params",
    "foreach",
    "fused",
    "capturable",
    "differentiable",
    "lr",
    "initial_lr",
    "weight_decay",
)


# ---------------------------------------------------------------------------------------------------
# state dicts as DCP sees them


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # detach() shares storage (and DTensor sharding) with the parameter, so DCP loads in place.
    return {clean_param_name(name): param.detach() for name, param in model.named_parameters()}


def _named_optim_params(optim: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor, dict[str, Any]]]:
    found = []
    for group in optim.param_groups:
        names = group.get("param_names")
        if names is None or len(names) != len(group["params"]):
            raise ValueError("every optimizer param group needs `param_names` (see train/optim.py)")
        found += [(clean_param_name(n), p, group) for n, p in zip(names, group["params"], strict=True)]
    return found


def _optim_tensors(optim: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    state = {}
    for name, param, _ in _named_optim_params(optim):
        entry = optim.state.get(param)
        if entry:
            state[name] = {k: v.detach() for k, v in entry.items() if isinstance(v, torch.Tensor)}
    return state


def _group_record(optim: torch.optim.Optimizer) -> list[dict[str, Any]]:
    groups = []
    for group in optim.param_groups:
        record = {k: v for k, v in group.items() if k != "params"}
        record["param_names"] = [clean_param_name(n) for n in record.get("param_names", [])]
        check_plain(record, "optimizer param group")
        groups.append(record)
    return groups


# ---------------------------------------------------------------------------------------------------
# writing


def _all_ok(ok: bool, world: World) -> bool:
    """True on every rank iff `ok` on every rank (a collective: it replaces a barrier)."""
    failures = torch.tensor([0 if ok else 1], dtype=torch.int64, device=world.device)
    return int(all_reduce_sum(failures, world).item()) == 0


def _run_everywhere(step: Callable[[], None], world: World, what: str) -> None:
    """Runs `step` on every rank; if it fails anywhere, every rank raises instead of waiting forever."""
    error: BaseException | None = None
    try:
        step()
    except Exception as e:  # re-raised below, after the other ranks have heard of it
        error = e
    if not _all_ok(error is None, world):
        if error is not None:
            raise error
        raise CheckpointError(f"{what} failed on another rank")


def _dcp_call(call: Callable[[], Any], what: str) -> None:
    """Runs a DCP save or load; its failures arrive wrapped (per rank) in a BaseException, unwrapped here."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with warnings.catch_warnings():
            # One process without a process group is a supported case here, not a guess to warn about.
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninit")
            call()
    except CheckpointException as e:
        errors = [exc for exc, _ in e.failures.values()]
        for error in errors:
            if isinstance(error, OlmoError):
                raise error from None
        first = errors[0] if errors else e
        raise CheckpointError(f"{what} failed: {type(first).__name__}: {str(first)[:300]}") from None


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _prepare(final: Path, tmp: Path, overwrite: bool, world: World) -> None:
    problem = None
    if world.is_main:
        if final.exists() and not final.is_dir():
            problem = f"cannot write checkpoint {final}: a file of that name exists"
        elif final.is_dir() and any(final.iterdir()) and not overwrite:
            problem = f"checkpoint {final} already exists"
        else:
            try:
                if tmp.exists():  # left by a run that died mid-save; never a complete checkpoint
                    shutil.rmtree(tmp)
                (tmp / MODEL_AND_OPTIM).mkdir(parents=True)
                (tmp / TRAIN).mkdir()
            except OSError as e:
                problem = f"cannot create {tmp}: {e.strerror or e}"
    problem = broadcast_object(problem, world)
    if problem:
        raise CheckpointError(problem, hint="choose another save folder, or set save_overwrite: true")


def _write_small_files(tmp: Path, optim: torch.optim.Optimizer | None, config_yaml: str) -> None:
    (tmp / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
    fsync_file(tmp / CONFIG_FILE)
    if optim is not None:
        (tmp / OPTIM_GROUPS).write_text(json.dumps(_group_record(optim), indent=1), encoding="utf-8")
        fsync_file(tmp / OPTIM_GROUPS)


def _publish(tmp: Path, final: Path) -> None:
    """Rank 0, after every rank has written: make the contents durable, then give the final name."""
    for directory in (tmp / MODEL_AND_OPTIM, tmp / TRAIN, tmp):
        fsync_dir(directory)
    _move_into_place(tmp, final)
    fsync_dir(final.parent)


def write_sharded(
    final_dir: Path | str,
    *,
    model: nn.Module,
    optim: torch.optim.Optimizer | None,
    trainer_state: dict[str, Any],
    config_yaml: str,
    world: World,
    overwrite: bool = False,
) -> Path:
    """Writes a sharded checkpoint at `final_dir` (e.g. `run/step40`); collective: every rank calls it.

    The directory must be on a filesystem every rank sees. An existing non-empty `final_dir` is an error
    unless `overwrite` (the old one is then replaced only once the new one is complete).
    """
    import torch.distributed.checkpoint as dcp

    final = Path(final_dir)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    _run_everywhere(lambda: _check_trainer_state(trainer_state), world, "checking the trainer state")
    _prepare(final, tmp, overwrite, world)
    state: dict[str, Any] = {"model": _model_tensors(model)}
    if optim is not None:
        state["optim"] = {"state": _optim_tensors(optim)}
    writer = _writer(tmp / MODEL_AND_OPTIM)

    def local_files() -> None:
        _torch_save(dict(trainer_state), tmp / TRAIN / f"rank{world.rank}.pt")
        if world.is_main:
            _write_small_files(tmp, optim, config_yaml)

    try:
        _dcp_call(
            lambda: dcp.save(state, storage_writer=writer, no_dist=not world.is_distributed),
            f"writing checkpoint {final}",
        )
        _run_everywhere(local_files, world, "writing the trainer state")
        _run_everywhere(
            lambda: _publish(tmp, final) if world.is_main else None, world, "publishing the checkpoint"
        )
    except BaseException as e:
        # Every rank gets here together (the calls above fail everywhere at once): the main rank removes
        # the partial directory, so a full disk is not kept full by it.
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            from olmo_cli.checkpoint.unsharded import state_bytes

            raise disk_full_error(final, state_bytes(state)) from None
        raise
    return final


def _writer(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemWriter

    return FileSystemWriter(path, single_file_per_rank=True, sync_files=True)


# ---------------------------------------------------------------------------------------------------
# reading


def _mismatches(expected: dict[str, torch.Size], metadata: Any, prefix: str) -> list[str]:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    stored = metadata.state_dict_metadata
    details = []
    for name, shape in expected.items():
        entry = stored.get(f"{prefix}{name}")
        if not isinstance(entry, TensorStorageMetadata):
            details.append(f"missing: {name}")
        elif tuple(entry.size) != tuple(shape):
            details.append(f"{name}: {tuple(entry.size)} in the checkpoint, {tuple(shape)} in the model")
    names = {k[len(prefix) :] for k in stored if k.startswith(prefix)}
    details += [f"unexpected: {n}" for n in sorted(names - expected.keys())]
    return details


def _optim_targets(optim: torch.optim.Optimizer, metadata: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Tensors to load the stored AdamW state into: the live ones where they exist (same storage), else
    new ones of the right sharding. Parameters without stored state (never stepped) are left out."""
    stored = metadata.state_dict_metadata
    targets: dict[str, dict[str, torch.Tensor]] = {}
    for name, param, group in _named_optim_params(optim):
        live = optim.state.get(param, {})
        entry = {}
        for key in _STATE_KEYS:
            if f"optim.state.{name}.{key}" not in stored:
                continue
            if key in live:
                entry[key] = live[key].detach()
            elif key == "step":
                on_device = group.get("capturable") or group.get("fused")
                entry[key] = torch.zeros((), dtype=torch.float32, device=param.device if on_device else "cpu")
            else:
                entry[key] = torch.zeros_like(param.detach())
        if entry:
            targets[name] = entry
    return targets


def _read_groups(directory: Path, optim: torch.optim.Optimizer) -> list[dict[str, Any]]:
    from olmo_cli.untrusted import read_json_text

    path = directory / OPTIM_GROUPS
    text = read_json_text(path, limit=64 << 20, error=CheckpointError, what="optimizer groups")
    try:
        groups = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"cannot read {path}: {str(e)[:200] or 'nested too deeply'}") from None
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("param_names", []), list) for g in groups
    ):
        raise CheckpointError(f"{path} is not a list of optimizer groups with their parameter names")
    live = optim.param_groups
    saved_names = [[clean_param_name(n) for n in g.get("param_names", [])] for g in groups]
    live_names = [[clean_param_name(n) for n in g["param_names"]] for g in live]
    if saved_names != live_names:
        raise CheckpointError(
            f"the checkpoint's optimizer groups ({[len(n) for n in saved_names]} parameters) do not match "
            f"this run's ({[len(n) for n in live_names]})",
            hint="resume with the model and optimizer.decay_* settings the checkpoint was written with, "
            "or set reset_optimizer_state: true",
        )
    return groups


def _install_optim(
    optim: torch.optim.Optimizer, loaded: dict[str, dict[str, torch.Tensor]], groups: list
) -> None:
    for name, param, _ in _named_optim_params(optim):
        if name in loaded:
            optim.state[param] = dict(loaded[name])
    for live, saved in zip(optim.param_groups, groups, strict=True):
        keep = {k: live[k] for k in (*_LIVE_KEYS, *OLMO_GROUP_FIELDS) if k in live}
        live.update({k: v for k, v in saved.items() if k not in keep})
        live.update(keep)
        if isinstance(live.get("betas"), list):
            live["betas"] = tuple(live["betas"])


def _read_trainer(directory: Path, world: World, warnings: list[str]) -> dict[str, Any]:
    from olmo_cli.config.yamlio import read_yaml

    path = directory / TRAIN / f"rank{world.rank}.pt"
    if not path.is_file():
        path = directory / TRAIN / "rank0.pt"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no trainer state ({TRAIN}/rank0.pt)")
    raw, more = load_trainer_pickle(path, what=f"trainer state {path.name}")
    warnings += more
    config = None
    if (directory / CONFIG_FILE).is_file():
        config = read_yaml(directory / "config.yaml", error=CheckpointError)
    batch, seq_len = batch_geometry(config if isinstance(config, dict) else None)
    return normalize_trainer_state(
        raw, global_batch_size=batch, max_sequence_length=seq_len, source=str(path)
    )


def read_sharded(
    directory: Path | str,
    *,
    model: nn.Module,
    optim: torch.optim.Optimizer | None,
    world: World,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """Loads a sharded checkpoint into `model` (and `optim`) in place; returns this rank's trainer state
    (`train/rank{R}.pt`, else `train/rank0.pt` when this run has more ranks than the writer).

    Collective: every rank calls it. The model and optimizer may be sharded differently from the writer's.
    Optimizer hyper-parameters (betas, eps, ...) come from the checkpoint; lr, weight decay, upstream's
    group fields and torch's execution flags stay those of the live optimizer (§4.3, §4.7).
    """
    import torch.distributed.checkpoint as dcp

    directory = Path(directory)
    dcp_dir = directory / MODEL_AND_OPTIM
    if not (dcp_dir / ".metadata").is_file():
        raise CheckpointError(
            f"{directory} is not a sharded checkpoint (no {MODEL_AND_OPTIM}/.metadata)",
            hint="give a step directory written by olmo, such as run/step1000",
        )
    reader = SafeReader(dcp_dir)
    metadata = reader.read_metadata()
    model_state = _model_tensors(model)
    details = _mismatches({k: v.shape for k, v in model_state.items()}, metadata, "model.")
    if details:
        raise CheckpointError(
            f"the checkpoint {directory} does not fit this model",
            details=details[:10],
            hint="resume with the model configuration the checkpoint was written with (its config.yaml)",
        )
    state: dict[str, Any] = {"model": model_state}
    groups = None
    if optim is not None:
        groups = _read_groups(directory, optim)
        state["optim"] = {"state": _optim_targets(optim, metadata)}
    _dcp_call(
        lambda: dcp.load(
            state, storage_reader=reader, planner=SafeLoadPlanner(), no_dist=not world.is_distributed
        ),
        f"reading checkpoint {directory}",
    )
    if optim is not None and groups is not None:
        _install_optim(optim, state["optim"]["state"], groups)
    barrier(world)
    return _read_trainer(directory, world, warnings if warnings is not None else [])
