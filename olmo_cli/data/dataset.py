"""Token files as fixed-length training instances, cut exactly as upstream OLMo does (docs/format.md §3.3).

File `j` of `T_j` tokens gives `floor(T_j / L)` instances; its last `T_j mod L` tokens are dropped;
instances never cross files and ignore document boundaries. Files are laid out in the order given
(duplicates are independent segments), so global instance `i` is local instance `i - offset_j` of the
file whose range holds it. With `data.datasets` the labels are sorted and their path lists concatenated.

Reading instance `i` reads its `L * itemsize` bytes and nothing else: local files with one `pread` on
a descriptor opened on first use, http(s) files with one byte-range request. File sizes are gathered
once, when the dataset is built (`os.stat`, or HEAD for URLs), which is all counting instances needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from olmo_cli.data.paths import TokenFile, expand_data_paths, is_url
from olmo_cli.data.remote import RemoteArray, remote_sizes
from olmo_cli.errors import DataError, UsageError

if TYPE_CHECKING:
    from olmo_cli.config.schema import DataConfig


@dataclass(frozen=True)
class Instance:
    """One training instance and where it came from."""

    index: int  # global instance index
    input_ids: np.ndarray  # int64 [L]
    label_mask: np.ndarray | None  # bool [L], when the data has label masks
    path: str
    file_index: int  # position of the file in the dataset's list
    token_offset: int  # first token's offset in that file
    label: str | None = None  # the data.datasets label it belongs to

    @property
    def metadata(self) -> dict[str, Any]:
        """Upstream's metadata: `{"label": ...}` for data.datasets, else `{"path": ...}`."""
        return {"label": self.label} if self.label is not None else {"path": self.path}


class LocalArray:
    """A flat little-endian array in a local file, read by slices with `os.pread`: exactly the bytes
    asked for, from any thread or forked worker (pread keeps no file position).

    Not a memory map on purpose: a page fault in a mapping reads the kernel's whole read-around window,
    which is `read_ahead_kb` (8 MiB on the machine this was measured on) per randomly placed instance:
    512 instances of fresh sparse files took 3.2 s that way against 8 ms with pread.
    """

    def __init__(self, path: str, dtype: np.dtype | str, size_bytes: int | None = None):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.size_bytes = os.path.getsize(path) if size_bytes is None else size_bytes
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.size_bytes // self.dtype.itemsize

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("LocalArray supports contiguous slices only")
        start, stop, _ = key.indices(len(self))
        itemsize = self.dtype.itemsize
        want = max(0, stop - start) * itemsize
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        data = bytearray()
        while len(data) < want:  # pread may return less than asked (rarely, for regular files)
            chunk = os.pread(self._fd, want - len(data), start * itemsize + len(data))
            if not chunk:
                raise DataError(f"{self.path} is shorter than it was ({self.size_bytes:,} bytes when opened)")
            data += chunk
        return np.frombuffer(bytes(data), dtype=self.dtype)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}  # a worker process opens its own descriptor

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # type: ignore[arg-type]


class MemmapDataset:
    """Random access to the instances of a list of raw token files (local paths or http(s) URLs)."""

    def __init__(
        self,
        paths: Sequence[str],
        seq_len: int,
        dtype: str = "uint16",
        label_mask_paths: Sequence[str] | None = None,
        labels: Sequence[str | None] | None = None,
    ):
        if seq_len < 1:
            raise UsageError(f"the sequence length must be positive, got {seq_len}")
        self.paths = [str(p) for p in paths]
        self.seq_len = seq_len
        self.dtype = _dtype(dtype)
        self.label_mask_paths = None if label_mask_paths is None else [str(p) for p in label_mask_paths]
        self.labels = list(labels) if labels is not None else [None] * len(self.paths)
        if self.label_mask_paths is not None and len(self.label_mask_paths) != len(self.paths):
            raise DataError(
                f"{len(self.label_mask_paths)} label mask files for {len(self.paths)} token files",
                hint="data.label_mask_paths needs one mask file per token file, in the same order",
            )
        if len(self.labels) != len(self.paths):
            raise UsageError(f"{len(self.labels)} labels for {len(self.paths)} token files")
        sizes = _file_sizes(self.paths)
        counts = [self._token_count(p, s) for p, s in zip(self.paths, sizes, strict=True)]
        self.file_tokens = np.array(counts, dtype=np.int64)
        self._sizes = dict(zip(self.paths, sizes, strict=True))  # bytes, so remote files need no second HEAD
        if self.label_mask_paths is not None:
            mask_sizes = _file_sizes(self.label_mask_paths)
            self._check_masks(mask_sizes)
            self._sizes.update(zip(self.label_mask_paths, mask_sizes, strict=True))
        self.file_instances = self.file_tokens // seq_len
        self.instance_ends = np.cumsum(self.file_instances)
        self._arrays: dict[tuple[str, str], Any] = {}

    def __len__(self) -> int:
        return int(self.instance_ends[-1]) if len(self.instance_ends) else 0

    @property
    def total_tokens(self) -> int:
        return int(self.file_tokens.sum())

    def locate(self, index: int) -> tuple[int, int]:
        """(file index, first token offset in that file) of global instance `index`."""
        if not 0 <= index < len(self):
            raise UsageError(f"instance {index} does not exist: the data has {len(self):,} instances")
        file_index = int(np.searchsorted(self.instance_ends, index, side="right"))
        first = int(self.instance_ends[file_index] - self.file_instances[file_index])
        return file_index, (index - first) * self.seq_len

    def __getitem__(self, index: int) -> Instance:
        index = int(index)
        file_index, offset = self.locate(index)
        path = self.paths[file_index]
        ids = self.read_tokens(file_index, offset, self.seq_len).astype(np.int64)
        mask = None
        if self.label_mask_paths is not None:
            mask_path = self.label_mask_paths[file_index]
            mask = np.asarray(self._array(mask_path, np.dtype(np.bool_))[offset : offset + self.seq_len])
            mask = mask.astype(np.bool_)
        return Instance(index, ids, mask, path, file_index, offset, self.labels[file_index])

    def read_tokens(self, file_index: int, start: int, count: int) -> np.ndarray:
        """Tokens [start, start + count) of file `file_index`, in the file's dtype."""
        return np.asarray(self._array(self.paths[file_index], self.dtype)[start : start + count])

    def _array(self, path: str, dtype: np.dtype) -> Any:
        key = (path, dtype.str)
        array = self._arrays.get(key)
        if array is None:
            size = self._sizes.get(path)
            array = RemoteArray(path, dtype, size) if is_url(path) else LocalArray(path, dtype, size)
            self._arrays[key] = array
        return array

    def _token_count(self, path: str, size: int) -> int:
        if size % self.dtype.itemsize:
            raise DataError(
                f"{path} is {size:,} bytes, not a whole number of {self.dtype.name} tokens",
                hint="is data.memmap_dtype right? (uint16 for vocabularies up to 65536, else uint32)",
            )
        return size // self.dtype.itemsize

    def _check_masks(self, mask_sizes: list[int]) -> None:
        assert self.label_mask_paths is not None
        rows = zip(self.paths, self.label_mask_paths, self.file_tokens, mask_sizes, strict=True)
        for path, mask, tokens, size in rows:
            if size != tokens:  # one bool byte per token
                raise DataError(
                    f"label mask {mask} has {size:,} entries but {path} has {int(tokens):,} tokens",
                    hint="a label mask file needs exactly one byte per token of its token file",
                )


def dataset_from_token_files(
    files: Sequence[TokenFile],
    seq_len: int,
    dtype: str,
    labels: Sequence[str | None] | None = None,
    label_mask_paths: Sequence[str] | None = None,
) -> MemmapDataset:
    """A dataset over expanded token files; their manifests must agree with `dtype`."""
    for token_file in files:
        manifest = token_file.manifest
        if manifest is not None and manifest.dtype != dtype:
            raise DataError(
                f"{manifest.directory} holds {manifest.dtype} tokens but the config reads {dtype}",
                hint=f"set data.memmap_dtype={manifest.dtype} (--set data.memmap_dtype={manifest.dtype})",
            )
    if label_mask_paths is None:
        masks = [f.label_mask for f in files]
        if any(m is not None for m in masks):
            missing = [f.path for f in files if f.label_mask is None]
            if missing:
                raise DataError(
                    "some token files have label masks and others do not, e.g. " + missing[0],
                    hint="finetune on chat data only (tokenized with --chat), or give data.label_mask_paths",
                )
            label_mask_paths = [m for m in masks if m is not None]
    return MemmapDataset([f.path for f in files], seq_len, dtype, label_mask_paths, labels)


def build_dataset(data: DataConfig, seq_len: int, data_items: Sequence[str] | None = None) -> MemmapDataset:
    """The dataset a config's `data` section describes; `data_items` (`--data`) replaces data.paths.

    With `data_items`, label masks come only from token-directory manifests: the config's
    data.label_mask_paths belong to the paths being replaced.
    """
    if data_items:
        return dataset_from_token_files(expand_data_paths(data_items), seq_len, data.memmap_dtype)
    if data.paths:
        masks = expand_data_paths(data.label_mask_paths) if data.label_mask_paths else None
        mask_paths = [m.path for m in masks] if masks is not None else None
        files = expand_data_paths(data.paths)
        return dataset_from_token_files(files, seq_len, data.memmap_dtype, None, mask_paths)
    if data.datasets:
        files = []
        labels: list[str | None] = []
        for label in sorted(data.datasets):  # upstream: labels in alphabetical order
            expanded = expand_data_paths(data.datasets[label])
            files.extend(expanded)
            labels.extend([label] * len(expanded))
        return dataset_from_token_files(files, seq_len, data.memmap_dtype, labels)
    raise UsageError(
        "the config names no training data",
        hint="set data.paths (--set data.paths=[a.npy,b.npy]) or pass --data DIR|FILE|GLOB",
    )


def _dtype(name: str) -> np.dtype:
    try:
        dtype = np.dtype(name)
    except TypeError as e:
        raise UsageError(f"unknown token dtype {name!r}", hint="use uint16 or uint32") from e
    if dtype.kind not in "ui":
        raise UsageError(f"token files hold integers, not {dtype.name}", hint="use uint16 or uint32")
    return dtype.newbyteorder("<")


def _file_sizes(paths: Sequence[str]) -> list[int]:
    """Byte sizes of local files and URLs (each distinct one looked at once; URLs concurrently)."""
    unique = list(dict.fromkeys(paths))
    urls = [p for p in unique if is_url(p)]
    unsupported = [u for u in urls if not u.startswith(("http://", "https://"))]
    if unsupported:
        raise UsageError(
            f"reading {unsupported[0].split('://')[0]}:// data directly is not supported",
            hint="use local files or http(s) URLs (download the files first)",
        )
    sizes = dict(zip(urls, remote_sizes(urls), strict=True))
    for path in unique:
        if path not in sizes:
            try:
                sizes[path] = os.stat(path).st_size
            except FileNotFoundError:
                raise DataError(f"data file not found: {path}", hint="check data.paths / --data") from None
    return [sizes[p] for p in paths]
