"""What a data item a user gives (a `--data` value, an entry of `data.paths`) stands for: token files.

- a token directory written by `olmo data tokenize` (it has `manifest.json`): its token files in
  manifest order, with their label masks and document counts;
- any other directory: its `*.npy` files, sorted by name (label masks, `*.mask.npy`, left out);
- a glob (`data/part-*.npy`): the matches, sorted, each expanded by these rules;
- a local file, or an http(s) URL: itself (URLs are not listed or checked here; their size is read
  when a dataset opens them).
Upstream's own configs list plain files and URLs, so for them expansion is the identity.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from olmo_cli.errors import DataError, UsageError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "olmo-tokens/1"
MASK_SUFFIX = ".mask.npy"
URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "r2://", "hf://", "weka://")
_GLOB_CHARS = set("*?[")
# A manifest lists one small entry per token file (of up to 1 GiB each): 64 MiB is far beyond any real one.
MAX_MANIFEST_BYTES = 64 << 20
# The checksums `olmo data tokenize` records per entry, by the entry key naming the file they belong to.
SHA256_KEYS = {"sha256": "path", "docs_sha256": "docs", "label_mask_sha256": "label_mask"}
NPY_MAGIC = b"\x93NUMPY"
_REDO = "re-run the `olmo data tokenize` command that made this directory"


def is_url(item: str) -> bool:
    return item.startswith(URL_SCHEMES)


@dataclass(frozen=True)
class Manifest:
    """The parts of a token directory's manifest.json that reading the data needs."""

    directory: Path
    dtype: str
    tokenizer: dict[str, Any]
    documents: int | None
    tokens: int | None
    files: tuple[dict[str, Any], ...]

    @property
    def eos_token_id(self) -> int | None:
        value = self.tokenizer.get("eos_token_id")
        return value if isinstance(value, int) else None


@dataclass(frozen=True)
class TokenFile:
    """One token file to read: where it is, its label mask, and what its manifest says about it."""

    path: str
    label_mask: str | None = None
    manifest: Manifest | None = None
    documents: int | None = None


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest of a token directory, or None when it has none. Every field reading the data uses is
    checked here: a manifest is input like any other, and may be damaged or hand-made."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    raw = _load_json(path)
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise DataError(
            f"{path} has format {found!r}, expected {MANIFEST_FORMAT!r}",
            hint="this olmo reads token directories written by `olmo data tokenize`",
        )
    files = raw.get("files")
    if raw.get("dtype") not in ("uint16", "uint32") or not isinstance(files, list):
        raise DataError(f"{path} lacks a valid 'dtype' (uint16 or uint32) or 'files' list", hint=_REDO)
    for i, entry in enumerate(files):
        _check_entry(path, i, entry)
    tokenizer = raw.get("tokenizer")
    return Manifest(
        directory=directory,
        dtype=raw["dtype"],
        tokenizer=tokenizer if isinstance(tokenizer, dict) else {},
        documents=raw.get("documents") if _is_count(raw.get("documents")) else None,
        tokens=raw.get("tokens") if _is_count(raw.get("tokens")) else None,
        files=tuple(files),
    )


def _size_of(path: Path) -> str:
    try:
        return f"{path.stat().st_size:,}"
    except OSError:
        return "more than that many"


def _load_json(path: Path) -> Any:
    from olmo_cli.untrusted import TooLarge, read_limited

    try:
        return json.loads(read_limited(path, MAX_MANIFEST_BYTES).decode("utf-8"))
    except TooLarge:
        raise DataError(
            f"{path} is {_size_of(path)} bytes, more than the {MAX_MANIFEST_BYTES:,} a manifest may be",
            hint="a manifest lists token files; this one is damaged or not a manifest: " + _REDO,
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise DataError(f"{path} is not readable JSON: {e}", hint=_REDO) from e
    except RecursionError:
        raise DataError(f"{path} is not readable JSON: it is nested too deeply", hint=_REDO) from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(path: Path, i: int, entry: Any) -> None:
    """One `files` entry: plain relative names (a manifest never makes olmo read outside its directory)
    and counts that are counts."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise DataError(f"{path}: files[{i}] has no 'path'", hint=_REDO)
    for key in ("path", "docs", "label_mask"):
        name = entry.get(key)
        if name is None and key != "path":
            continue
        if not isinstance(name, str) or not _is_inside(name):
            raise DataError(
                f"{path}: files[{i}].{key} is {name!r}, not a file name inside {path.parent}",
                hint="a manifest names files in its own directory only: " + _REDO,
            )
    for key in ("tokens", "documents"):
        if key == "tokens" or key in entry:
            if not _is_count(entry.get(key)):
                raise DataError(
                    f"{path}: files[{i}].{key} is {entry.get(key)!r}, not a count of {key}", hint=_REDO
                )
    for key in SHA256_KEYS:
        digest = entry.get(key)
        if digest is not None and not (isinstance(digest, str) and _is_sha256(digest)):
            raise DataError(f"{path}: files[{i}].{key} is {digest!r}, not a sha256 hex digest", hint=_REDO)


def _is_inside(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(name) and "\\" not in name and not PurePosixPath(name).is_absolute() and ".." not in parts


def _is_sha256(digest: str) -> bool:
    return len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def expand_data_paths(items: Sequence[str]) -> list[TokenFile]:
    """Every token file the items name, in order; a DataError for an item that names nothing."""
    if isinstance(items, str):  # a lone string would be expanded character by character
        raise UsageError("data paths must be a list of paths, not one string")
    found: list[TokenFile] = []
    for item in items:
        found.extend(_expand_one(str(item)))
    return found


def _expand_one(item: str) -> list[TokenFile]:
    if is_url(item):
        refuse_documents_file(item)
        return [TokenFile(item)]
    path = Path(item).expanduser()
    if path.is_dir():
        return _expand_directory(path)
    if path.is_file():
        refuse_documents_file(str(path))
        refuse_npy_format(path)
        return [TokenFile(str(path))]
    if _GLOB_CHARS & set(item):
        matches = sorted(glob.glob(str(path)))
        if not matches:
            raise DataError(f"no files match {item}", hint="check the pattern; it is matched from the cwd")
        return [token_file for match in matches for token_file in _expand_one(match)]
    raise DataError(
        f"data path not found: {item}",
        hint="give token files, a directory from `olmo data tokenize`, a glob or an http(s) URL",
    )


def _expand_directory(directory: Path) -> list[TokenFile]:
    manifest = read_manifest(directory)
    if manifest is None:
        files = sorted(p for p in directory.glob("*.npy") if not p.name.endswith(MASK_SUFFIX))
        if not files:
            # A bare .json beside them is more often a config or a tokenizer than documents.
            documents = [
                p for p in sorted(directory.iterdir()) if _documents_kind(p.name) and p.suffix != ".json"
            ]
            if documents:
                refuse_documents_file(str(directory), example=documents[0].name)
            raise DataError(
                f"{directory} holds no *.npy token files and no {MANIFEST}",
                hint="give a directory `olmo data tokenize` wrote, token files, or a glob of them",
            )
        for path in files:
            refuse_npy_format(path)
        return [TokenFile(str(p)) for p in files]
    expanded = []
    for entry in manifest.files:
        problem = entry_problem(manifest, entry)
        if problem is not None:
            raise DataError(problem, hint=_REDO + " (or restore the file from where it was copied)")
        mask = entry.get("label_mask")
        expanded.append(
            TokenFile(
                str(directory / entry["path"]),
                label_mask=str(directory / mask) if isinstance(mask, str) else None,
                manifest=manifest,
                documents=entry.get("documents"),
            )
        )
    return expanded


def entry_problem(manifest: Manifest, entry: dict[str, Any]) -> str | None:
    """What is wrong with a listed token file (or its label mask) by its manifest's counts, or None.

    Sizes only, so it is cheap enough for every run: a file cut short (a copy that stopped, a full disk)
    would otherwise train silently on fewer tokens, or on a mask that no longer lines up.
    """
    problems = entry_problems(manifest, entry)
    return problems[0][1] if problems else None


def entry_problems(manifest: Manifest, entry: dict[str, Any]) -> list[tuple[Path, str]]:
    """(file, what is wrong) for each of an entry's token file and label mask that is missing or whose
    size is not what the token count makes it."""
    listing = manifest.directory / MANIFEST
    tokens = entry["tokens"]
    itemsize = 2 if manifest.dtype == "uint16" else 4
    checks = [(entry["path"], tokens * itemsize, f"{tokens:,} {manifest.dtype} tokens")]
    if isinstance(entry.get("label_mask"), str):
        checks.append((entry["label_mask"], tokens, f"a label mask of {tokens:,} tokens"))
    problems = []
    for name, expected, what in checks:
        path = manifest.directory / name
        if not path.is_file():
            problems.append((path, f"{path} is listed in {listing} but missing"))
            continue
        size = path.stat().st_size
        if size != expected:
            problems.append(
                (
                    path,
                    f"{path} is {size:,} bytes, but {listing} lists {what}, which is {expected:,} bytes: "
                    f"the file is {'truncated' if size < expected else 'longer than it was written'}",
                )
            )
    return problems


def _documents_kind(name: str) -> str | None:
    from olmo_cli.data.inputs import classify

    found = classify(name)
    return found[0] if found is not None else None


def refuse_documents_file(item: str, *, example: str | None = None) -> None:
    """A JSON Lines or text file of documents (plain or compressed), or a directory of them (`example` names
    one), given as token data: it would be read as token ids, so say what to run instead."""
    kind = _documents_kind(example or PurePosixPath(item).name)
    if kind is None:
        return
    name = "JSON Lines" if kind == "jsonl" else "text"
    what = (
        f"{item} holds {name} files of documents ({example})"
        if example
        else f"{item} is a {name} file of documents"
    )
    raise DataError(
        f"{what}, not token ids: training reads the token files `olmo data tokenize` writes",
        hint=f"tokenize first: olmo data tokenize {item} --tokenizer TOKENIZER --output DIR, then train on "
        "DIR (e.g. --data DIR)",
    )


def refuse_npy_format(path: Path) -> None:
    """A file saved with `np.save` has a header that would be read as token ids: say so instead."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC) + 2)
    except OSError as e:
        raise DataError(f"cannot read token file {path}: {e}") from e
    # The magic, then the format version (1, 2 or 3) that `np.save` writes: an accidental match is unlikely.
    if head[: len(NPY_MAGIC)] == NPY_MAGIC and head[len(NPY_MAGIC) : len(NPY_MAGIC) + 1] in (
        b"\x01",
        b"\x02",
        b"\x03",
    ):
        raise DataError(
            f"{path} is a NumPy .npy file written by np.save, with a header: olmo reads raw token ids, and "
            "would read that header as tokens",
            hint="re-save the array without a header: np.load(path).astype('uint16').tofile(path) "
            "(or uint32 for vocabularies over 65536), or tokenize documents with `olmo data tokenize`",
        )
