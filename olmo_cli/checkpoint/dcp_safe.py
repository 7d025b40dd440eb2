"""Reading torch.distributed.checkpoint (DCP) directories without running code from them.

DCP's `FileSystemReader` unpickles `.metadata` with plain `pickle.load`, and its default planner reads
non-tensor entries with `torch.load(weights_only=False)`: a checkpoint from elsewhere could run anything.
`SafeReader` unpickles the metadata with an allow-list of DCP's own metadata classes (plus torch sizes,
dtypes, layouts and paths), and `SafeLoadPlanner` refuses non-tensor entries (olmo stores none). Tensor
data itself is already read by DCP with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import pathlib
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from olmo_cli.checkpoint.names import checked_child
from olmo_cli.errors import CheckpointError

__all__ = ["SafeLoadPlanner", "SafeReader", "check_storage_files", "restricted_metadata_loads"]

_DCP = "torch.distributed.checkpoint"
_ALLOWED_CLASSES = {
    (f"{_DCP}.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {(f"{_DCP}.filesystem", "_StorageInfo"), ("torch", "Size"), ("torch.serialization", "_get_layout")}
_PATHS = {(m, c) for m in ("pathlib", "pathlib._local") for c in ("PurePosixPath", "PureWindowsPath")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name.replace("Pure", "")) in {(m, c.replace("Pure", "")) for m, c in _PATHS}:
            # A checkpoint_id path, possibly from another OS: its inert pure flavour is enough.
            return pathlib.PureWindowsPath if "Windows" in name else pathlib.PurePosixPath
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent references are not allowed in checkpoint metadata")


def restricted_metadata_loads(data: bytes, *, source: str) -> Any:
    """Unpickles DCP metadata, admitting only the classes that DCP metadata is made of."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except Exception as e:
        raise CheckpointError(
            f"{source} cannot be read safely: {type(e).__name__}: {str(e)[:300]}",
            hint="the checkpoint metadata is damaged, or holds objects that are not checkpoint metadata "
            "(refused without running them)",
        ) from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{source} does not hold checkpoint metadata (found {type(metadata).__name__})")
    return metadata


def _int_at_least_zero(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_storage_files(metadata: Any, directory: pathlib.Path, *, source: str) -> None:
    """Every storage entry names a file directly inside `directory` (no `..`, separators, absolute
    paths or symlinks leading out) and a byte range that lies within that file."""
    storage = getattr(metadata, "storage_data", None)
    if storage is None:
        return
    if not isinstance(storage, dict):
        raise CheckpointError(f"{source}: storage_data is a {type(storage).__name__}, not a mapping")
    sizes: dict[str, int] = {}
    for index, info in storage.items():
        where = f"the storage entry of {getattr(index, 'fqn', '?')!r}"
        name = getattr(info, "relative_path", None)
        if name not in sizes:
            file = checked_child(directory, name, field=f"{where} (relative_path)", source=source)
            try:
                sizes[name] = file.stat().st_size
            except OSError:
                raise CheckpointError(
                    f"{source}: {where} names {name!r}, which is not in {directory}",
                    hint="the checkpoint is incomplete: download or copy it again",
                ) from None
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if not (_int_at_least_zero(offset) and _int_at_least_zero(length)) or offset + length > sizes[name]:
            raise CheckpointError(
                f"{source}: {where} asks for bytes {offset!r}+{length!r} of {name} ({sizes[name]:,} bytes)",
                hint="the checkpoint is truncated or damaged: download or copy it again",
            )


class SafeReader(FileSystemReader):
    """A `FileSystemReader` whose metadata is unpickled through `restricted_metadata_loads`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.metadata import StorageMeta

        path = pathlib.Path(self._get_metadata_path(kwargs.get("rank")))
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"cannot read checkpoint metadata {path}: {e.strerror}") from None
        metadata = restricted_metadata_loads(data, source=str(path))
        check_storage_files(metadata, pathlib.Path(self.path), source=str(path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """Loads tensors only: a non-tensor entry (a pickle DCP would load unrestricted) is refused."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        raise CheckpointError(
            f"checkpoint entry {read_item.dest_index.fqn!r} is a pickled object, not a tensor; refused",
            hint="olmo's sharded checkpoints hold tensors only; this one was written by something else",
        )
