"""Upstream OLMo's safetensors encoding of nested state dicts (`model.safetensors`, `optim.safetensors`).

A nested dict is flattened to one safetensors entry per leaf. The entry's name is the URL-safe base64
(with padding) of `pickle.dumps((key_path, pickled))`: `key_path` is the tuple of dict keys down to the
leaf (strings or ints), `pickled` says whether the tensor is a real tensor or a 1-D uint8 tensor holding
`pickle.dumps(value)` of a non-tensor leaf (numbers, strings, the optimizer's `param_groups` list).

Names differ by the writer's pickle protocol, so readers decode them rather than compare strings. Both
names and pickled values are decoded by a data-only unpickler (`safe_pickle.restricted_loads`).
"""

from __future__ import annotations

import base64
import binascii
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from olmo_cli.checkpoint._files import write_atomically
from olmo_cli.checkpoint.safe_pickle import check_plain, restricted_loads
from olmo_cli.errors import CheckpointError

__all__ = [
    "PICKLE_PROTOCOL",
    "compact",
    "decode_key",
    "decode_state",
    "encode_key",
    "encode_state",
    "load_olmo_safetensors",
    "save_olmo_safetensors",
]

# Protocol 4 is what upstream's Python (3.8-3.13) wrote by default; fixing it keeps our files
# byte-identical to upstream's whatever Python writes them.
PICKLE_PROTOCOL = 4

KeyPath = tuple[str | int, ...]


def encode_key(path: KeyPath, pickled: bool) -> str:
    data = pickle.dumps((tuple(path), bool(pickled)), protocol=PICKLE_PROTOCOL)
    return base64.urlsafe_b64encode(data).decode("ascii")


def decode_key(key: str, *, source: str = "safetensors file") -> tuple[KeyPath, bool]:
    try:
        # validate=True: the lenient decoder would silently drop characters outside the alphabet, so a
        # plain name such as "transformer.wte.weight" would decode to garbage instead of failing.
        raw = base64.b64decode(key.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise CheckpointError(
            f"{source}: entry {key[:80]!r} is not an OLMo-encoded name (base64 of a pickled key path)",
            hint="OLMo checkpoints name safetensors entries in upstream's encoding; a Hugging Face "
            "model.safetensors is a different format (use `olmo convert-hf` for those)",
        ) from None
    decoded = restricted_loads(raw, what=f"{source}: name of entry {key[:80]!r}")
    if not (
        isinstance(decoded, tuple)
        and len(decoded) == 2
        and isinstance(decoded[0], tuple)
        and decoded[0]
        and all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in decoded[0])
        and isinstance(decoded[1], bool)
    ):
        raise CheckpointError(
            f"{source}: entry {key[:80]!r} decodes to {decoded!r:.120}, not (key path tuple, pickled flag)"
        )
    return decoded[0], decoded[1]


def compact(tensor: torch.Tensor) -> torch.Tensor:
    """A detached CPU tensor owning exactly its own bytes (views of larger storages are copied)."""
    tensor = tensor.detach().cpu()
    if (
        not tensor.is_contiguous()
        or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size()
    ):
        tensor = tensor.contiguous().clone()
    return tensor


def _flatten(nested: Mapping[Any, Any], prefix: KeyPath, out: dict[str, torch.Tensor]) -> None:
    for key, value in nested.items():
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise TypeError(f"state key {prefix + (key,)!r}: only str and int keys can be encoded")
        path = prefix + (key,)
        if isinstance(value, torch.Tensor):
            out[encode_key(path, False)] = compact(value)
        elif isinstance(value, Mapping) and value:
            _flatten(value, path, out)
        else:
            # An empty dict is pickled as a value rather than vanishing (upstream drops it), so that e.g.
            # an optimizer's empty `state` survives the round trip; upstream readers unpickle it fine.
            value = dict(value) if isinstance(value, Mapping) else value
            check_plain(value, f"state value at {path!r}")
            data = bytearray(pickle.dumps(value, protocol=PICKLE_PROTOCOL))
            out[encode_key(path, True)] = torch.frombuffer(data, dtype=torch.uint8)


def encode_state(nested: Mapping[Any, Any]) -> dict[str, torch.Tensor]:
    """Nested dict -> {encoded name: tensor}, upstream's layout; tensors sharing storage are copied."""
    out: dict[str, torch.Tensor] = {}
    _flatten(nested, (), out)
    seen: set[int] = set()
    for name, tensor in out.items():
        pointer = tensor.untyped_storage().data_ptr()
        if pointer and pointer in seen:  # safetensors refuses shared storage
            out[name] = tensor.clone()
        seen.add(pointer)
    return out


def _unpickle_value(tensor: torch.Tensor, what: str) -> Any:
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise CheckpointError(
            f"{what} is marked pickled but is a {tensor.dtype} tensor of shape {list(tensor.shape)}"
        )
    return restricted_loads(tensor.numpy().tobytes(), what=what)


def decode_state(flat: Mapping[str, torch.Tensor], *, source: str = "safetensors file") -> dict[Any, Any]:
    """{encoded name: tensor} -> the nested dict it was made from. Conflicting paths are an error."""
    result: dict[Any, Any] = {}
    for key, tensor in flat.items():
        path, pickled = decode_key(key, source=source)
        value = _unpickle_value(tensor, f"{source}: value at {path!r}") if pickled else tensor
        target = result
        for depth, part in enumerate(path[:-1]):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise CheckpointError(f"{source}: {path[: depth + 1]!r} is both a value and a dict of values")
        if path[-1] in target:
            raise CheckpointError(f"{source}: key path {path!r} occurs twice")
        target[path[-1]] = value
    return result


def save_olmo_safetensors(path: Path | str, nested: Mapping[Any, Any]) -> None:
    """Writes `nested` in upstream's encoding, atomically (temporary sibling, fsync, rename)."""
    from safetensors.torch import save_file

    tensors = encode_state(nested)
    write_atomically(Path(path), lambda tmp: save_file(tensors, str(tmp)))


def load_olmo_safetensors(path: Path | str, *, what: str | None = None) -> dict[Any, Any]:
    """Reads an OLMo-encoded safetensors file back into its nested dict (tensors on the CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    what = what or str(path)
    try:
        flat = load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{what} does not exist") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{what} is truncated or not a safetensors file ({str(e)[:300]})",
            hint="download or copy the checkpoint again",
        ) from None
    return decode_state(flat, source=what)
