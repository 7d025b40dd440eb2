"""Reading pickles from checkpoints we did not write, without running them.

Checkpoint files come from elsewhere (downloads, other people's runs), and unpickling is code execution:
a pickle names any importable callable and calls it. So nothing here uses `pickle.loads` or a plain
`torch.load`:

- Values and keys inside OLMo safetensors files are decoded by `restricted_loads`, whose unpickler
  resolves no global at all: only data with its own pickle opcodes comes out (dict, list, tuple, str,
  bytes, int, float, bool, None, set). That is everything torch's AdamW puts in `param_groups`.
- `.pt` files go through `torch.load(weights_only=True)`, torch's own restricted unpickler. `train.pt`
  additionally needs a short allow-list (`TRAIN_STATE_GLOBALS`): pathlib paths and the pieces of a NumPy
  array, for the legacy NumPy RNG state. Any other global in `train.pt` is not resolved: the value that
  needs it is replaced by an inert placeholder and dropped with a warning (`load_trainer_pickle`).
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from olmo_cli.errors import CheckpointError

__all__ = [
    "check_plain",
    "load_torch_weights",
    "load_trainer_pickle",
    "restricted_loads",
    "train_state_globals",
]

_PLAIN_SCALARS = (str, bytes, bytearray, int, float, bool, type(None))


class _Refused(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _latin1_bytes(text: str, encoding: str) -> bytes:
    # Protocols 0-2 have no bytes opcode and pickle b"..." as _codecs.encode(text, "latin1"); only that
    # use is admitted (any other codec name would make the file ask for a codec lookup).
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# Protocols below 4 have no opcodes for these containers and name their constructors instead; allowing
# them keeps "plain data" the same whatever protocol wrote the file.
_CONSTRUCTORS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): _latin1_bytes,
}


class _DataOnlyUnpickler(pickle.Unpickler):
    # find_class is the single door through which a pickle reaches code (GLOBAL, STACK_GLOBAL, INST,
    # OBJ and the extension registry all pass through it); it opens only to the constructors above.
    def find_class(self, module: str, name: str) -> Any:
        # Protocols 0-2 write Python 2's module name; the stock unpickler maps it in find_class.
        found = _CONSTRUCTORS.get(("builtins" if module == "__builtin__" else module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent reference")


def restricted_loads(data: bytes, *, what: str) -> Any:
    """Unpickles plain data only; anything that names a class or function is refused, never imported."""
    try:
        return _DataOnlyUnpickler(io.BytesIO(data)).load()
    except _Refused as e:
        raise CheckpointError(
            f"{what} is a pickle that asks for {e.what}; refused without running it",
            hint="only plain data (dicts, lists, tuples, strings, numbers, booleans, None) is read from "
            "checkpoints; this file may be malicious or from an incompatible writer",
        ) from None
    except Exception as e:  # any malformed stream: truncated, bad opcode, wrong memo index, ...
        raise CheckpointError(f"{what} is not a valid pickle ({type(e).__name__}: {e})") from None


def check_plain(value: Any, where: str) -> None:
    """Raises TypeError unless `value` is data that `restricted_loads` can read back."""
    if isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            check_plain(key, f"{where} key")
            check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__qualname__}; checkpoints store only plain data there")


# ---------------------------------------------------------------------------------------------------
# torch.load with weights_only=True


def _path_globals() -> list[tuple[type, str]]:
    # Upstream's train.pt lists checkpoint directories as pathlib paths. Python 3.13 moved the classes to
    # pathlib._local; a path from the other operating system family becomes its pure (inert) flavour,
    # because the concrete class cannot be instantiated here.
    posix = pathlib.PosixPath if os.name != "nt" else pathlib.PurePosixPath
    windows = pathlib.WindowsPath if os.name == "nt" else pathlib.PureWindowsPath
    found: list[tuple[type, str]] = []
    for module in ("pathlib", "pathlib._local"):
        found += [
            (posix, f"{module}.PosixPath"),
            (windows, f"{module}.WindowsPath"),
            (pathlib.PurePosixPath, f"{module}.PurePosixPath"),
            (pathlib.PureWindowsPath, f"{module}.PureWindowsPath"),
        ]
    return found


def _numpy_globals() -> list[Any]:
    # The legacy NumPy RNG state holds a uint32 array. An array pickles as
    # `_reconstruct(ndarray, shape, dtype)` plus `ndarray.__setstate__`; NumPy 2 renamed the module of
    # `_reconstruct` from numpy.core to numpy._core, and files from both eras exist. Object arrays stay
    # out: their dtype class is not allowed.
    import numpy as np

    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    numeric = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
    numeric += [np.float16, np.float32, np.float64]
    return [
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *(type(np.dtype(t)) for t in numeric),
    ]


def train_state_globals() -> list[Any]:
    """The non-tensor types `train.pt` may hold, for `torch.serialization.safe_globals`."""
    return [*_path_globals(), *_numpy_globals()]


def _torch_load(path: Path, extra_globals: list[Any]) -> Any:
    with torch.serialization.safe_globals(extra_globals):
        return torch.load(path, map_location="cpu", weights_only=True)


def _unsafe_globals(path: Path, extra_globals: list[Any]) -> list[str]:
    """The globals the file names beyond the allowed ones, read from the opcodes without running them."""
    try:
        with torch.serialization.safe_globals(extra_globals):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip-format torch file: the legacy format is a few pickles in a row
        return _legacy_foreign_globals(path)


_LEGACY_PICKLES = 5  # magic number, protocol, system info, the object, its storage keys
_LEGACY_KNOWN = ("torch.", "collections.OrderedDict", "builtins.set", "_codecs.encode")


def _legacy_foreign_globals(path: Path) -> list[str]:
    """The globals named by a legacy-format torch file that are not torch's own (nor the container
    types torch admits), read from the pickle opcodes only; [] when the file is not such a file."""
    import pickletools

    found: set[str] = set()
    try:
        with open(path, "rb") as f:
            for _ in range(_LEGACY_PICKLES):
                strings: list[str] = []
                memo: dict[int, Any] = {}
                for opcode, arg, _pos in pickletools.genops(f):
                    name = opcode.name
                    if name in ("GLOBAL", "INST"):
                        found.add(str(arg).replace(" ", "."))
                    elif isinstance(arg, str) and "UNICODE" in name:
                        strings.append(arg)
                    elif name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                        memo[int(arg)] = strings[-1]
                    elif name == "MEMOIZE" and strings:
                        memo[len(memo)] = strings[-1]
                    elif name in ("BINGET", "LONG_BINGET", "GET") and isinstance(memo.get(int(arg)), str):
                        strings.append(memo[int(arg)])
                    elif name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.add(f"{strings[-2]}.{strings[-1]}")
                    if name == "STOP":
                        break
                else:
                    break
    except Exception:  # noqa: BLE001 - a stream that is not pickles past some point: name what was seen
        pass
    return sorted(g for g in found if not g.startswith(_LEGACY_KNOWN))


def _load_error(path: Path, what: str, error: Exception, unsafe: list[str]) -> CheckpointError:
    if unsafe:
        return CheckpointError(
            f"{what} ({path}) holds objects that are not plain data ({', '.join(unsafe[:5])}); refused "
            "without running them",
            hint="checkpoints are loaded with torch.load(weights_only=True); re-save the file with plain "
            "tensors and containers if you trust its source",
        )
    if isinstance(error, pickle.UnpicklingError):
        # torch's message is several paragraphs of advice; its reason follows "Unpickler error:".
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        at = next((i for i, line in enumerate(lines) if "Unpickler error:" in line), None)
        reason = lines[at].split("Unpickler error:", 1)[1].strip() if at is not None else ""
        if at is not None and not reason and at + 1 < len(lines):
            reason = lines[at + 1]
        first_line = (reason or (lines[-1] if lines else type(error).__name__))[:300]
        return CheckpointError(f"{what} ({path}) cannot be read safely: {first_line}")
    return CheckpointError(
        f"{what} ({path}) is truncated or corrupt ({type(error).__name__}: {str(error)[:300]})",
        hint="download or copy the checkpoint again",
    )


def load_torch_weights(path: Path, *, what: str) -> Any:
    """`torch.load` of a model/optimizer `.pt` file: tensors and plain containers only."""
    try:
        return _torch_load(path, [])
    except Exception as e:
        raise _load_error(path, what, e, _unsafe_globals(path, [])) from None


_ARRAY_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def _forged_dtype(dtype: Any) -> bool:
    import numpy as np

    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        return True
    if dtype.hasobject or dtype.names is not None:
        return True
    canonical = np.dtype(dtype.str)  # the same type made afresh: a pickled state cannot alter it
    return (dtype.itemsize, dtype.alignment, dtype.flags) != (
        canonical.itemsize,
        canonical.alignment,
        canonical.flags,
    )


def check_arrays(value: Any, *, path: Path, what: str) -> None:
    """Every NumPy array or dtype in `value` is a plain numeric one. A dtype is rebuilt from pickled state,
    which can claim fields, objects or sizes the data does not have: touching such an array's data
    reads memory it does not own, so it is refused before anything looks at the data."""
    import numpy as np

    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, (np.ndarray, np.dtype, np.generic)):
            dtype = item if isinstance(item, np.dtype) else item.dtype
            if _forged_dtype(dtype) or (
                isinstance(item, np.ndarray) and item.nbytes != item.size * np.dtype(dtype.str).itemsize
            ):
                raise CheckpointError(
                    f"{what} ({path}) holds a NumPy array whose type is not a plain number type "
                    f"({dtype.kind!r} kind, {'with' if dtype.fields is not None else 'no'} fields); refused",
                    hint="a trainer state holds only numeric arrays (the NumPy RNG state); this file is "
                    "damaged or crafted",
                )


class _Skipped:
    """Stands in for an object whose class or function is not allowed; it runs nothing."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Skipped:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _placeholder(name: str) -> type[_Skipped]:
    return type("Skipped", (_Skipped,), {"global_name": name})


def _first_skipped(value: Any) -> str | None:
    if isinstance(value, _Skipped):
        return value.global_name
    if isinstance(value, (list, tuple, set, frozenset)):
        items: Iterator[Any] = iter(value)
    elif isinstance(value, dict):
        items = (x for pair in value.items() for x in pair)
    else:
        return None
    for item in items:
        found = _first_skipped(item)
        if found is not None:
            return found
    return None


def _drop_skipped(value: Any, where: str, warn: Callable[[str], None]) -> Any:
    """Removes every dict entry whose key or value holds a placeholder, with a warning each."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        inner = f"{where}.{key}" if where else str(key)
        name = _first_skipped(key)
        if name is None and not isinstance(item, dict):
            name = _first_skipped(item)
        if name is not None:
            warn(f"skipped {inner!r}: it holds a pickled {name} object, which is not plain data (not run)")
            continue
        out[key] = _drop_skipped(item, inner, warn)
    return out


def load_trainer_pickle(path: Path, *, what: str) -> tuple[Any, list[str]]:
    """`torch.load(weights_only=True)` of a trainer state with the `train_state_globals` allow-list.

    Values that need any other class or function are dropped with a warning (returned), never
    constructed. Raises CheckpointError when the file is corrupt, or when the unsafe part cannot be
    cut out (a blocklisted module such as `os`, or the whole file is such an object).
    """
    allowed = train_state_globals()
    try:
        loaded = _torch_load(path, allowed)
    except Exception as e:
        unsafe = _unsafe_globals(path, allowed)
        if not unsafe:
            raise _load_error(path, what, e, []) from None
    else:
        check_arrays(loaded, path=path, what=what)
        return loaded, []
    # Second pass: each offending name now resolves to its own inert placeholder class, so the rest of
    # the file can be read. Blocklisted modules (os, sys, ...) are refused by torch before this mapping.
    stand_ins = [(_placeholder(name), name) for name in unsafe]
    try:
        loaded = _torch_load(path, allowed + stand_ins)
    except Exception as e:
        raise _load_error(path, what, e, unsafe) from None
    if isinstance(loaded, _Skipped):
        raise _load_error(path, what, pickle.UnpicklingError(), unsafe)
    check_arrays(loaded, path=path, what=what)
    warnings: list[str] = []
    return _drop_skipped(loaded, "", lambda message: warnings.append(f"{what}: {message}")), warnings
