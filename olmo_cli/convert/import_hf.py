"""A Hugging Face `OlmoForCausalLM` or `Olmo2ForCausalLM` directory (model_type "olmo" or "olmo2") read
as a native model, and written in the native unsharded layout that `resume`, `finetune`, `eval` and
`generate` take.

Reads `config.json`, the weights (`model.safetensors`, sharded safetensors with an index, or
`pytorch_model*.bin` through the restricted unpickler) and `tokenizer.json` if present. transformers
itself is not needed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from olmo_cli.checkpoint.layout import HF_CONFIG_FILE, TOKENIZER_FILE
from olmo_cli.checkpoint.model_state import check_model_state
from olmo_cli.config.schema import ModelConfig, TokenizerConfig, TrainConfig
from olmo_cli.convert.hf import from_hf_state_dict
from olmo_cli.errors import CheckpointError, UsageError

__all__ = ["HFCheckpoint", "model_config_from_hf", "read_hf", "read_hf_config", "write_native"]

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"

_OTHER_FAMILIES = {
    "hf_olmo": "the legacy `hf_olmo` format (allenai/OLMo-1B, OLMo-7B) needs its custom code; use the "
    "`-hf` repository of the same model (e.g. allenai/OLMo-1B-hf), which is model_type olmo",
    "olmoe": "OLMoE is a mixture-of-experts model; olmo implements the dense OLMo 1 and OLMo 2 families",
}


@dataclass
class HFCheckpoint:
    """What a transformers Olmo directory holds, in native terms."""

    path: Path
    config: TrainConfig
    model: dict[str, torch.Tensor]
    """Native parameter names, fp32."""
    tokenizer_file: Path | None
    warnings: list[str] = field(default_factory=list)


_MAX_CONFIG_JSON_BYTES = 1 << 20  # a transformers config.json is a few KB


def _read_config_json(path: Path) -> dict[str, Any]:
    file = path / HF_CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{path} has no config.json",
            hint="give a Hugging Face model directory (as written by save_pretrained)",
        )
    from olmo_cli.untrusted import read_json_text

    text = read_json_text(file, limit=_MAX_CONFIG_JSON_BYTES, error=CheckpointError, what="a model config")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {str(e)[:200] or 'nested too deeply'}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is not a JSON object")
    return data


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):  # some configs list several EOS ids; the first is the document end
        value = value[0] if value else None
    return value if isinstance(value, int) else None


def _rope_theta(hf: dict[str, Any]) -> float:
    """transformers 4.x writes `rope_theta` and `rope_scaling`; 5.x folds both into `rope_parameters`."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    kind = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    if scaling or kind != "default":
        raise UsageError(
            f"this model uses scaled RoPE ({scaling or kind}), which OLMo-1 models do not have",
            hint="only plain RoPE (rope_scaling null) converts",
        )
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else hf.get("rope_theta", 10000.0))


def _check_architecture(hf: dict[str, Any], source: str) -> None:
    model_type = hf.get("model_type")
    if model_type not in ("olmo", "olmo2"):
        hint = _OTHER_FAMILIES.get(
            str(model_type),
            "olmo converts transformers' OLMo models (model_type olmo or olmo2: OlmoForCausalLM, "
            "Olmo2ForCausalLM)",
        )
        raise UsageError(
            f"{source} is a {model_type!r} model, not an OLMo ('olmo' or 'olmo2') model", hint=hint
        )
    problems = []
    if hf.get("attention_bias"):
        problems.append("attention_bias is true (OLMo linears have no bias)")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act is {hf.get('hidden_act')!r}, not silu")
    heads, hidden = hf.get("num_attention_heads"), hf.get("hidden_size")
    head_dim = hf.get("head_dim")
    if head_dim is not None and heads and hidden and head_dim * heads != hidden:
        problems.append(f"head_dim {head_dim} x {heads} heads != hidden_size {hidden}")
    if problems:
        raise UsageError(f"{source} cannot be expressed as an OLMo model: " + "; ".join(problems))


def model_config_from_hf(hf: dict[str, Any], *, vocab_size: int | None = None) -> ModelConfig:
    """The native ModelConfig of a transformers Olmo `config.json` (`vocab_size`: the tokenizer's, if
    known; HF's `vocab_size` is the padded embedding size)."""
    _check_architecture(hf, "config.json")
    try:
        d_model, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        n_layers, intermediate = int(hf["num_hidden_layers"]), int(hf["intermediate_size"])
        embedding = int(hf["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"config.json lacks a usable {e} field for an Olmo model") from None
    n_kv = hf.get("num_key_value_heads") or n_heads
    mlp_hidden = 2 * intermediate
    ratio = mlp_hidden // d_model if mlp_hidden % d_model == 0 else None
    eos = _first_id(hf.get("eos_token_id"))
    pad = _first_id(hf.get("pad_token_id"))
    eos = eos if eos is not None else 0
    # OLMo 2: RMSNorm with weights after attention and MLP, QK-norm with weights, its own epsilon
    olmo2 = hf.get("model_type") == "olmo2"
    norms: dict[str, Any] = {
        "layer_norm_type": "default",
        "layer_norm_with_affine": False,
        "attention_layer_norm_with_affine": False,
    }
    if olmo2:
        norms = {
            "layer_norm_type": "rms",
            "layer_norm_with_affine": True,
            "layer_norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
            "attention_layer_norm": True,
            "attention_layer_norm_with_affine": True,
            "norm_after": True,
        }
    return ModelConfig(
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=None if n_kv == n_heads else int(n_kv),
        clip_qkv=None if olmo2 else hf.get("clip_qkv"),
        n_layers=n_layers,
        mlp_ratio=ratio or 4,
        mlp_hidden_size=None if ratio else mlp_hidden,
        activation_type="swiglu",
        rope=True,
        rope_theta=_rope_theta(hf),
        attention_dropout=float(hf.get("attention_dropout") or 0.0),
        residual_dropout=0.0,
        embedding_dropout=0.0,
        **norms,
        bias_for_layer_norm=False,
        include_bias=False,
        max_sequence_length=int(hf.get("max_position_embeddings", 2048)),
        vocab_size=vocab_size if vocab_size is not None and vocab_size <= embedding else embedding,
        embedding_size=embedding,
        weight_tying=bool(hf.get("tie_word_embeddings", False)),
        eos_token_id=eos,
        pad_token_id=pad if pad is not None else eos,
        init_fn="normal",
    )


def _weight_files(path: Path) -> list[Path]:
    for index_name, single in ((SAFETENSORS_INDEX, "model.safetensors"), (BIN_INDEX, "pytorch_model.bin")):
        if (path / single).is_file():
            return [path / single]
        index = path / index_name
        if index.is_file():
            return _indexed_files(path, index, index_name)
    raise CheckpointError(
        f"{path} has no weights (model.safetensors, {SAFETENSORS_INDEX} or pytorch_model.bin)",
        hint="give a Hugging Face model directory as written by save_pretrained",
    )


_MAX_INDEX_BYTES = 64 * 2**20  # a 400B-parameter model's index is a few MB


def _indexed_files(path: Path, index: Path, index_name: str) -> list[Path]:
    """The weight files an index names: plain names of files in `path` (a Hugging Face cache snapshot's
    files may be symlinks into the cache's `blobs/`, which is admitted)."""
    from olmo_cli.checkpoint.names import checked_child
    from olmo_cli.untrusted import read_json_text

    text = read_json_text(index, limit=_MAX_INDEX_BYTES, error=CheckpointError, what="a weight index")
    try:
        weight_map = json.loads(text)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError(f"weight_map is a {type(weight_map).__name__}, not a mapping")
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{index} is not a weight index: {type(e).__name__}: {str(e)[:200]}") from None
    blobs = path.parent.parent / "blobs" if path.parent.name == "snapshots" else None
    files = [
        checked_child(path, name, field="weight_map", source=index, extra_root=blobs)
        for name in dict.fromkeys(weight_map.values())
    ]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(
            f"{path} lacks weight files named in {index_name}: {', '.join(missing[:3])}",
            hint="download the whole model directory",
        )
    return files


def _load_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from olmo_cli.checkpoint.safe_pickle import load_torch_weights

    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            try:
                state.update(load_file(str(file), device="cpu"))
            except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                raise CheckpointError(f"{file} is truncated or not a safetensors file ({e})") from None
        else:
            part = load_torch_weights(file, what=f"weights {file.name}")
            if not isinstance(part, dict):
                raise CheckpointError(f"{file} does not hold a state dict")
            state.update(part)
    return state


def _tokenizer_vocab(file: Path | None) -> int | None:
    if file is None:
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(file)).get_vocab_size(with_added_tokens=True)
    except Exception:  # noqa: BLE001 - a tokenizer we cannot read still leaves the weights usable
        return None


def _tokenizer_identifier(file: Path | None, fallback: str) -> str:
    """A built-in tokenizer by name when the file is one (so a round trip keeps `builtin:...`), else the
    file's absolute path."""
    from olmo_cli.data.tokenizer import BUILTIN, BUILTIN_DIR, BUILTIN_PREFIX

    if file is None:
        return fallback
    digest = hashlib.sha256(file.read_bytes()).digest()
    for name, (builtin_file, _eos, _pad) in BUILTIN.items():
        if hashlib.sha256((BUILTIN_DIR / builtin_file).read_bytes()).digest() == digest:
            return BUILTIN_PREFIX + name
    return str(file.resolve())


def read_hf_config(path: Path | str) -> tuple[TrainConfig, Path | None]:
    """The native config of a transformers Olmo / Olmo2 directory (from config.json and the tokenizer, no
    weights read) and its tokenizer.json, if any. An unsupported architecture is an error."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory", hint="give a Hugging Face model directory")
    hf = _read_config_json(path)
    _check_architecture(hf, str(path))
    tokenizer_file = path / TOKENIZER_FILE if (path / TOKENIZER_FILE).is_file() else None
    model_cfg = model_config_from_hf(hf, vocab_size=_tokenizer_vocab(tokenizer_file))
    identifier = _tokenizer_identifier(tokenizer_file, fallback=TokenizerConfig().identifier)
    config = TrainConfig(
        run_name=path.name, model=model_cfg, tokenizer=TokenizerConfig(identifier=identifier)
    )
    return config, tokenizer_file


def read_hf(path: Path | str) -> HFCheckpoint:
    """Reads a transformers Olmo directory; unsupported architectures and missing weights are errors."""
    path = Path(path)
    config, tokenizer_file = read_hf_config(path)
    raw = _load_weights(_weight_files(path))
    warnings = []
    try:
        state = from_hf_state_dict(raw, config.model)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    upcast = sorted({str(t.dtype) for t in state.values() if t.dtype != torch.float32})
    if upcast:
        warnings.append(f"weights stored as {', '.join(upcast)} were upcast to float32")
        state = {k: v.float() for k, v in state.items()}
    check_model_state(state, config.model, source=str(path))
    if tokenizer_file is None:
        warnings.append(f"{path} has no tokenizer.json; set tokenizer.identifier in the config yourself")
    return HFCheckpoint(path, config, state, tokenizer_file, warnings)


def write_native(checkpoint: HFCheckpoint, output: Path | str, *, overwrite: bool = False) -> Path:
    """Writes the native unsharded layout (config.yaml, model.safetensors; no optimizer or trainer state,
    so training from it starts fresh) plus the tokenizer.json, which `generate` prefers."""
    from olmo_cli.checkpoint.unsharded import write_unsharded
    from olmo_cli.config.yamlio import dump_config

    output = Path(output)
    config = checkpoint.config
    if checkpoint.tokenizer_file is not None and not config.tokenizer.identifier.startswith("builtin:"):
        # Point at the copy that travels with the checkpoint, not at the source directory.
        tokenizer = config.tokenizer.model_copy(update={"identifier": str(output.resolve() / TOKENIZER_FILE)})
        config = config.model_copy(update={"tokenizer": tokenizer})
    text = dump_config(config)
    final = write_unsharded(output, checkpoint.model, None, None, text, overwrite=overwrite)
    if checkpoint.tokenizer_file is not None:
        from olmo_cli.atomic import atomic_write_bytes

        atomic_write_bytes(final / TOKENIZER_FILE, checkpoint.tokenizer_file.read_bytes())
    return final
