"""The published checkpoint indexes: CSV files with the header `Step,Checkpoint Directory`.

Upstream publishes one per model in its repository (`checkpoints/official/*.csv`), one row per
unsharded checkpoint: the step, and the URL of its directory (trailing `/`), e.g.
`https://olmo-checkpoints.org/ai2-llm/olmo-medium/wvc30anm/step1000-unsharded/`. Rows are sorted by
step, the last line may lack its newline, and a step may be listed twice (two runs); the later row wins.
"""

from __future__ import annotations

import bisect
import csv
import io
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from olmo_cli.errors import ConfigError, NetworkError, UsageError

__all__ = [
    "HF_REPOS",
    "INDEX_BASE_URL",
    "MODELS",
    "CheckpointIndex",
    "IndexEntry",
    "check_model",
    "load_index",
    "model_for_config",
    "official_index_url",
    "parse_index",
    "read_index_file",
    "tokens_per_step",
]

INDEX_BASE_URL = "https://raw.githubusercontent.com/allenai/OLMo/main/checkpoints/official/"
# model name (= preset name) -> index file name
MODELS: dict[str, str] = {
    "1b": "OLMo-1B.csv",
    "7b": "OLMo-7B.csv",
    "7b-twin-2t": "OLMo-7B-Twin-2T.csv",
    "7b-0424": "OLMo-7B-0424.csv",
    "7b-0724": "OLMo-7B-0724.csv",
}
# model name -> the Hugging Face repository whose branches are the intermediate checkpoints
HF_REPOS: dict[str, str] = {
    "1b": "allenai/OLMo-1B",
    "7b": "allenai/OLMo-7B",
    "7b-twin-2t": "allenai/OLMo-7B-Twin-2T",
    "7b-0424": "allenai/OLMo-7B-0424-hf",
    "7b-0724": "allenai/OLMo-7B-0724-hf",
}
HEADER = ("step", "checkpoint directory")
INDEX_MAX_AGE_S = 24 * 3600.0
MAX_INDEX_BYTES = 16 << 20
"""The largest index read: upstream's biggest is well under 1 MiB (a few thousand rows)."""
MAX_FIELD_CHARS = 8192
"""The longest cell: a step or a URL; csv's own limit (128 KiB) is kept as the hard stop."""
_STEP = re.compile(r"^\d{1,18}$")
# The bucket upstream's own configs name, and the public address that serves it.
_ALIASES = {"r2://olmo-checkpoints/": "https://olmo-checkpoints.org/"}


@dataclass(frozen=True)
class IndexEntry:
    step: int
    url: str  # the checkpoint directory, ending in "/"
    line: int  # where it was listed, for messages


@dataclass(frozen=True)
class CheckpointIndex:
    source: str
    entries: tuple[IndexEntry, ...]

    def steps(self) -> list[int]:
        return sorted({e.step for e in self.entries})

    def latest(self) -> IndexEntry:
        return self.find(self.steps()[-1])

    def find(self, step: int) -> IndexEntry:
        """The row for `step` (the last one if listed twice); a UsageError naming the nearest steps."""
        rows = [e for e in self.entries if e.step == step]
        if rows:
            return rows[-1]
        near = self.nearest(step)
        raise UsageError(
            f"step {step} is not in the checkpoint index {self.source}",
            details=[f"nearest available steps: {', '.join(map(str, near))}"],
            hint="pick one of those, use --latest, or run `olmo checkpoints list` for all of them",
        )

    def nearest(self, step: int, count: int = 6) -> list[int]:
        """Up to `count` listed steps closest to `step`, in increasing order."""
        steps = self.steps()
        at = bisect.bisect_left(steps, step)
        window = steps[max(0, at - count) : at + count]
        return sorted(sorted(window, key=lambda s: (abs(s - step), s))[:count])


def check_model(name: str) -> str:
    if name not in MODELS:
        raise UsageError(
            f"no published checkpoints for model {name!r}",
            details=[f"models with published checkpoints: {', '.join(MODELS)}"],
            hint="pass one with --model, or give an index file or URL with --index",
        )
    return name


# run_name (lower case) in presets and upstream configs -> model name
_RUN_NAMES = {
    "olmo-1b": "1b",
    "olmo-7b": "7b",
    "olmo-7b-twin-2t": "7b-twin-2t",
    "olmo-7b-0424": "7b-0424",
    "olmo-1.7-7b": "7b-0424",
    "olmo-7b-0724": "7b-0724",
}


def model_for_config(path: Path) -> str | None:
    """The model a config file (a run's or a checkpoint's config.yaml) trains, from its run_name."""
    from olmo_cli.config.yamlio import read_yaml

    data = read_yaml(path)
    run_name = data.get("run_name") if isinstance(data, dict) else None
    return _RUN_NAMES.get(str(run_name).lower()) if run_name else None


def official_index_url(model: str) -> str:
    return INDEX_BASE_URL + MODELS[check_model(model)]


def _directory_url(raw: str, base: str | None, where: str) -> str:
    url = raw.strip()
    for alias, public in _ALIASES.items():
        if url.startswith(alias):
            url = public + url[len(alias) :]
    if not urlsplit(url).scheme:
        if base is None or not urlsplit(base).scheme:
            raise ConfigError(
                f"{where}: {_show(raw)} is not a URL",
                hint="checkpoint directories must be URLs (https://, s3://, gs://, r2://, hf://)",
            )
        url = urljoin(base, url)  # a relative directory in an index served over HTTP
    return url if url.endswith("/") else url + "/"


def _rows(text: str, source: str) -> list[tuple[int, list[str]]]:
    """(line, cells) of every row; a ConfigError naming the line for what csv cannot read."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    rows = []
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        problem = (
            f"a field longer than {csv.field_size_limit()} characters (the limit)"
            if "field limit" in str(exc)
            else f"not a readable CSV row ({exc})"
        )
        raise ConfigError(
            f"{source} line {max(reader.line_num, 1)}: {problem}",
            hint="a checkpoint index has one 'STEP,URL' row per line",
        ) from None
    return rows


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def parse_index(text: str, source: str) -> CheckpointIndex:
    """Rows of an index in upstream's format; a ConfigError naming the line for anything else."""
    base = source if urlsplit(source).scheme in ("http", "https") else None
    if len(text) > MAX_INDEX_BYTES:
        raise ConfigError(
            f"{source} is not a checkpoint index: larger than {MAX_INDEX_BYTES >> 20} MiB",
            hint="use an index in upstream's format (checkpoints/official/*.csv)",
        )
    rows = _rows(text, source)
    header = tuple(cell.strip().lower() for cell in rows[0][1]) if rows else ()
    if header != HEADER:
        raise ConfigError(
            f"{source} is not a checkpoint index: the first line must be 'Step,Checkpoint Directory'",
            hint="use an index in upstream's format (checkpoints/official/*.csv)",
        )
    entries = []
    for line, row in rows[1:]:
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{source} line {line}"
        if any(len(cell) > MAX_FIELD_CHARS for cell in row):
            raise ConfigError(
                f"{where}: a field longer than {MAX_FIELD_CHARS} characters (the limit)",
                hint="a checkpoint index has one 'STEP,URL' row per line",
            )
        if len(row) != 2 or not _STEP.match(row[0].strip()):
            raise ConfigError(
                f"{where}: expected 'STEP,URL' with a non-negative integer step, got {_show(row)}"
            )
        entries.append(IndexEntry(int(row[0]), _directory_url(row[1], base, where), line))
    if not entries:
        raise ConfigError(f"{source} lists no checkpoints")
    return CheckpointIndex(source, tuple(entries))


def read_index_file(path: Path, source: str) -> CheckpointIndex:
    """An index from a file on disk: at most MAX_INDEX_BYTES, UTF-8, then parsed."""
    from olmo_cli.untrusted import TooLarge, read_limited

    try:
        raw = read_limited(path, MAX_INDEX_BYTES)
    except TooLarge:
        raise ConfigError(
            f"{source} is not a checkpoint index: larger than {MAX_INDEX_BYTES >> 20} MiB (the limit)",
            hint="use an index in upstream's format (checkpoints/official/*.csv)",
        ) from None
    except OSError as exc:  # a device or FIFO too
        raise UsageError(f"cannot read the index {source}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{source} line {line}: not UTF-8 text (byte {exc.start})",
            hint="a checkpoint index is a UTF-8 CSV file with the header 'Step,Checkpoint Directory'",
        ) from None
    return parse_index(text, source)


def load_index(
    location: str, cache_dir: Path | None = None, max_age_s: float = INDEX_MAX_AGE_S
) -> CheckpointIndex:
    """An index from a local file, or from a URL through cached-path: a copy younger than `max_age_s` is
    used as it is; an older one is checked against the server (and used if the server cannot be reached)."""
    path = Path(location).expanduser()
    if not urlsplit(location).scheme and not path.is_file():
        raise UsageError(f"index file {location} does not exist", hint="give a path or a URL to --index")
    if path.is_file():
        return read_index_file(path, str(path))
    from cached_path import cached_path, find_latest_cached

    # cached-path logs its offline fallback (and its giving up, as an error); what happened reaches the
    # user as our one error message instead.
    logging.getLogger("cached_path").setLevel(logging.CRITICAL)
    recent = find_latest_cached(location, cache_dir)
    if recent is not None and time.time() - recent.stat().st_mtime < max_age_s:
        # Published indexes change a few times a year; this also spares an offline user cached-path's
        # half-minute of connection retries before it falls back to the cached copy.
        return read_index_file(recent, location)
    try:
        local = Path(cached_path(location, cache_dir=cache_dir, quiet=True))
    except FileNotFoundError as exc:
        raise NetworkError(f"checkpoint index {location} not found", hint="check the URL") from exc
    except Exception as exc:  # noqa: BLE001 - requests, boto and google clients raise their own types
        raise NetworkError(
            f"could not read the checkpoint index {location}: {type(exc).__name__}: {exc}",
            hint="check the network; an index read once is cached and used when offline",
        ) from exc
    return read_index_file(local, location)


def tokens_per_step(model: str) -> int | None:
    """Tokens one optimizer step trains on, from the model's preset (None if it cannot be told)."""
    from olmo_cli.config.loader import load_config

    try:
        cfg = load_config(preset=model).config
        return int(cfg.global_train_batch_size) * int(cfg.model.max_sequence_length)
    except Exception:  # noqa: BLE001 - a column of the listing is not worth failing for
        return None
