"""A native checkpoint written as a Hugging Face `OlmoForCausalLM` (OLMo 1) or `Olmo2ForCausalLM` (OLMo 2)
directory that transformers loads with `from_pretrained` and no remote code:

    config.json                      model_type olmo / olmo2, sizes, rope_theta, clip_qkv or rms_norm_eps,
                                     tying, token ids
    model.safetensors                or model-0000k-of-0000n.safetensors + model.safetensors.index.json
    generation_config.json           eos / pad ids
    tokenizer.json                   the checkpoint's own tokenizer, as it is
    tokenizer_config.json            PreTrainedTokenizerFast over tokenizer.json: no BOS, no EOS added
    special_tokens_map.json

The directory is assembled under a temporary sibling name and renamed into place when complete.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from olmo_cli.atomic import (
    atomic_write_text,
    check_output_dir,
    disk_full_error,
    fsync_dir,
    give_umask_mode,
    is_disk_full,
)
from olmo_cli.checkpoint.layout import HF_CONFIG_FILE, TOKENIZER_FILE
from olmo_cli.convert.hf import hf_config_dict, to_hf_state_dict
from olmo_cli.errors import UsageError

if TYPE_CHECKING:
    from olmo_cli.checkpoint.weights import CheckpointWeights
    from olmo_cli.data.tokenizer import ResolvedTokenizer

__all__ = ["ExportResult", "export_hf", "parse_size", "plan_shards", "tokenizer_files"]

INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)

# Called as progress(done_bytes, total_bytes) while weights are written.
Progress = Callable[[int, int], None]


def parse_size(text: str) -> int:
    """'5GB' -> 5*10**9 bytes, '500MiB' -> 500*2**20 (transformers' convention: GB decimal, GiB binary)."""
    match = _SIZE.match(text)
    if match is None:
        raise UsageError(f"not a size: {text!r}", hint="e.g. 5GB, 500MB, 2GiB or a number of bytes")
    power = " kmgt".index(match[2].lower() or " ")
    size = int(float(match[1]) * ((1024 if match[3] else 1000) ** power))
    if size <= 0:
        raise UsageError(f"the shard size must be positive, got {text!r}")
    return size


def plan_shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Keys grouped into files of at most `max_bytes`, in order (a larger tensor gets a file alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def _write_weights(
    tmp: Path, tensors: dict[str, torch.Tensor], max_bytes: int, progress: Progress | None
) -> int:
    from safetensors.torch import save_file

    shards = plan_shards(tensors, max_bytes)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    done = 0
    for name, keys in zip(names, shards, strict=True):
        save_file({k: tensors[k] for k in keys}, str(tmp / name), metadata={"format": "pt"})
        give_umask_mode(tmp / name)
        done += sum(tensors[k].numel() * tensors[k].element_size() for k in keys)
        if progress is not None:
            progress(done, total)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": total},
            "weight_map": {key: name for name, keys in zip(names, shards, strict=True) for key in keys},
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return len(shards)


def tokenizer_files(
    tokenizer: ResolvedTokenizer, *, eos_token_id: int, pad_token_id: int, max_length: int
) -> dict[str, str]:
    """tokenizer.json (unchanged) plus the two small files AutoTokenizer reads beside it.

    The class is the generic fast tokenizer, so the tokenizer's own JSON decides everything (OLMo's
    GPT-NeoX class would be right only for GPT-NeoX files); no BOS, and no EOS added at encode time.
    """
    eos = tokenizer.tokenizer.id_to_token(eos_token_id)
    pad = tokenizer.tokenizer.id_to_token(pad_token_id)
    special = {"eos_token": eos, "pad_token": pad}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
    }
    return {
        TOKENIZER_FILE: tokenizer.json_text,
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }


@dataclass
class ExportResult:
    path: Path
    shards: int
    total_bytes: int
    dtype: str
    warnings: list[str]


def _hf_config(checkpoint: CheckpointWeights, dtype: str) -> dict[str, Any]:
    try:
        config = hf_config_dict(checkpoint.config.model)
    except ValueError as e:
        raise UsageError(
            str(e), hint="OLMo 1 and OLMo 2 style models convert (see `olmo presets show 1b` or olmo2-1b)"
        ) from None
    config["torch_dtype"] = dtype
    return config


def _prepare_output(output: Path, overwrite: bool) -> Path:
    check_output_dir(output, overwrite)
    tmp = output.with_name(output.name + ".tmp")
    if tmp.exists():  # left by a conversion that died; never a complete directory
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _move_into_place(tmp: Path, output: Path) -> None:
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    fsync_dir(output.parent)


def export_hf(
    checkpoint: CheckpointWeights,
    tokenizer: ResolvedTokenizer | None,
    output: Path | str,
    *,
    max_shard_bytes: int = 5 * 10**9,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Writes `checkpoint` as a transformers Olmo directory at `output` (see the module doc).

    With `tokenizer` None no tokenizer files are written (a warning says so).
    """
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", hint=f"one of {', '.join(DTYPES)}")
    output = Path(output)
    cfg = checkpoint.config.model
    config = _hf_config(checkpoint, dtype)
    hf_state = to_hf_state_dict(checkpoint.state, cfg)
    if cfg.weight_tying:
        del hf_state["lm_head.weight"]  # the embedding itself; transformers ties it back on load
    tensors = {k: v.to(DTYPES[dtype]).contiguous() for k, v in hf_state.items()}
    warnings = list(checkpoint.warnings)
    tmp = _prepare_output(output, overwrite)
    try:
        shards = _write_weights(tmp, tensors, max_shard_bytes, progress)
        files = {HF_CONFIG_FILE: json.dumps(config, indent=2) + "\n"}
        generation = {"_from_model_config": True, "eos_token_id": config["eos_token_id"]}
        generation["pad_token_id"] = config["pad_token_id"]
        files["generation_config.json"] = json.dumps(generation, indent=2) + "\n"
        if tokenizer is not None:
            ids = {"eos_token_id": config["eos_token_id"], "pad_token_id": config["pad_token_id"]}
            files.update(tokenizer_files(tokenizer, **ids, max_length=cfg.max_sequence_length))
        else:
            warnings.append("no tokenizer files written: the checkpoint's tokenizer could not be loaded")
        for name, text in files.items():
            atomic_write_text(tmp / name, text)
        fsync_dir(tmp)
        _move_into_place(tmp, output)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full_error(output, sum(t.nbytes for t in tensors.values())) from None
        raise
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    return ExportResult(output, shards, total, dtype, warnings)
