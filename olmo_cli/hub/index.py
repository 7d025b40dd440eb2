"""The published checkpoint indexes: CSV files, one row per checkpoint directory.

Upstream publishes one per model and stage, one row per checkpoint: the step, and the URL of its
directory (trailing `/`), e.g. `https://olmo-checkpoints.org/ai2-llm/olmo-medium/wvc30anm/step1000-unsharded/`.
Stage 1 (and all of OLMo 1) has the header `Step,Checkpoint Directory`; OLMo 2's stage 2 has
`Ingredient,Step,Checkpoint Directory`: several short runs ("ingredients", named 1, 2, ... and, for 32B,
`soup`), each with its own steps, so a step can be listed once per ingredient. Rows are sorted by step,
the last line may lack its newline, and a step may be listed twice in one ingredient (two runs); the
later row wins.

The files are read at fixed commits: upstream deleted OLMo 1's `checkpoints/official/*.csv` from its
main branch, and keeps OLMo 2's next to its configs (OLMo 2 32B's in the OLMo-core repository).
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
from olmo_cli.offline import cached_when_offline

__all__ = [
    "HF_REPOS",
    "MODELS",
    "CheckpointIndex",
    "IndexEntry",
    "PublishedModel",
    "check_model",
    "is_sharded_entry",
    "load_index",
    "model_for_config",
    "official_index_url",
    "parse_index",
    "published_model",
    "read_index_file",
    "tokens_per_step",
]

_OLMO = "https://raw.githubusercontent.com/allenai/OLMo/"
# The parent of upstream's commit 889aaaa5, which deleted checkpoints/official/ from the main branch.
_OLMO1_BASE = _OLMO + "206da7c76bd7b6871726d8942155c19da87cb2a4/checkpoints/official/"
_OLMO2_BASE = _OLMO + "59a53e3f68e546330ca5a99ec626e58f9ab96494/configs/"
_OLMO2_32B_BASE = (
    "https://raw.githubusercontent.com/allenai/OLMo-core/fa6c5014c9f6e9ee789da2d9c20d5126fee8df0d/"
    "src/scripts/official/OLMo2/"
)


@dataclass(frozen=True)
class PublishedModel:
    """A model with published intermediate checkpoints (its name is also its preset's)."""

    name: str
    family: str  # "OLMo 1" or "OLMo 2"
    stage1_index: str  # URL of the index of its (stage 1) checkpoints
    stage2_index: str | None  # URL of OLMo 2's stage-2 (ingredients) index; None where there is none
    hf_repo: str  # the Hugging Face repository whose branches are the intermediate checkpoints
    sharded: bool = False
    """Its directories are OLMo-core's sharded `stepN/` (torch.distributed.checkpoint), not unsharded."""

    def index_url(self, stage: int = 1) -> str:
        if stage == 1:
            return self.stage1_index
        if self.stage2_index is None:
            raise UsageError(
                f"model {self.name} has no published stage-2 checkpoints",
                details=[f"models with stage 2: {', '.join(m.name for m in PUBLISHED if m.stage2_index)}"],
                hint="leave out --stage (stage 1), or pick an OLMo 2 model",
            )
        return self.stage2_index


PUBLISHED: tuple[PublishedModel, ...] = (
    PublishedModel("1b", "OLMo 1", _OLMO1_BASE + "OLMo-1B.csv", None, "allenai/OLMo-1B"),
    PublishedModel("7b", "OLMo 1", _OLMO1_BASE + "OLMo-7B.csv", None, "allenai/OLMo-7B"),
    PublishedModel(
        "7b-twin-2t", "OLMo 1", _OLMO1_BASE + "OLMo-7B-Twin-2T.csv", None, "allenai/OLMo-7B-Twin-2T"
    ),
    PublishedModel("7b-0424", "OLMo 1", _OLMO1_BASE + "OLMo-7B-0424.csv", None, "allenai/OLMo-7B-0424-hf"),
    PublishedModel("7b-0724", "OLMo 1", _OLMO1_BASE + "OLMo-7B-0724.csv", None, "allenai/OLMo-7B-0724-hf"),
    PublishedModel(
        "olmo2-1b",
        "OLMo 2",
        _OLMO2_BASE + "official-0425/OLMo-2-0425-1B.csv",
        _OLMO2_BASE + "official-0425/OLMo-2-0425-1B-stage2.csv",
        "allenai/OLMo-2-0425-1B",
    ),
    PublishedModel(
        "olmo2-7b",
        "OLMo 2",
        _OLMO2_BASE + "official-1124/OLMo-2-1124-7B.csv",
        _OLMO2_BASE + "official-1124/OLMo-2-1124-7B-stage2.csv",
        "allenai/OLMo-2-1124-7B",
    ),
    PublishedModel(
        "olmo2-13b",
        "OLMo 2",
        _OLMO2_BASE + "official-1124/OLMo-2-1124-13B.csv",
        _OLMO2_BASE + "official-1124/OLMo-2-1124-13B-stage2.csv",
        "allenai/OLMo-2-1124-13B",
    ),
    PublishedModel(
        "olmo2-32b",
        "OLMo 2",
        _OLMO2_32B_BASE + "OLMo-2-0325-32B.csv",
        _OLMO2_32B_BASE + "OLMo-2-0325-32B-stage2.csv",
        "allenai/OLMo-2-0325-32B",
        sharded=True,
    ),
)
_BY_NAME = {m.name: m for m in PUBLISHED}
# Kept for callers of the earlier tables: model name -> stage-1 index URL / Hugging Face repository.
MODELS: dict[str, str] = {m.name: m.stage1_index for m in PUBLISHED}
HF_REPOS: dict[str, str] = {m.name: m.hf_repo for m in PUBLISHED}

HEADER = ("step", "checkpoint directory")
HEADER_INGREDIENTS = ("ingredient", "step", "checkpoint directory")
INDEX_MAX_AGE_S = 24 * 3600.0
MAX_INDEX_BYTES = 16 << 20
"""The largest index read: upstream's biggest is well under 1 MiB (a few thousand rows)."""
MAX_FIELD_CHARS = 8192
"""The longest cell: a step or a URL; csv's own limit (128 KiB) is kept as the hard stop."""
_STEP = re.compile(r"^\d{1,18}$")
_INGREDIENT = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# The bucket upstream's own configs name, and the public address that serves it.
_ALIASES = {"r2://olmo-checkpoints/": "https://olmo-checkpoints.org/"}
_FORMAT_HINT = (
    "use an index in upstream's format: the header 'Step,Checkpoint Directory' "
    "(or 'Ingredient,Step,Checkpoint Directory' for OLMo 2's stage 2), then one row per checkpoint"
)


@dataclass(frozen=True)
class IndexEntry:
    step: int
    url: str  # the checkpoint directory, ending in "/"
    line: int  # where it was listed, for messages
    ingredient: str | None = None  # OLMo 2 stage 2's ingredient ("1", "2", ..., "soup"); None elsewhere


@dataclass(frozen=True)
class CheckpointIndex:
    source: str
    entries: tuple[IndexEntry, ...]

    @property
    def has_ingredients(self) -> bool:
        return any(e.ingredient is not None for e in self.entries)

    def ingredients(self) -> list[str]:
        """The ingredients listed, numbers in numeric order first, then names."""
        names = {e.ingredient for e in self.entries if e.ingredient is not None}
        return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))

    def select(self, ingredient: str | None) -> CheckpointIndex:
        """The rows of one ingredient (all rows for None); a UsageError naming the ingredients there are."""
        if ingredient is None:
            return self
        if not self.has_ingredients:
            raise UsageError(
                f"the checkpoint index {self.source} has no ingredients",
                hint="--ingredient is for OLMo 2's stage 2: add --stage 2, or leave out --ingredient",
            )
        rows = tuple(e for e in self.entries if e.ingredient == ingredient)
        if not rows:
            raise UsageError(
                f"ingredient {_show(ingredient)} is not in the checkpoint index {self.source}",
                details=[f"ingredients there: {', '.join(self.ingredients())}"],
                hint="pick one of those with --ingredient",
            )
        return CheckpointIndex(self.source, rows)

    def steps(self, ingredient: str | None = None) -> list[int]:
        return sorted({e.step for e in self.select(ingredient).entries})

    def latest(self, ingredient: str | None = None) -> IndexEntry:
        """The last checkpoint (of `ingredient`); with ingredients and none given, the ingredients' last
        steps must agree on one row, else a UsageError lists each ingredient's last step."""
        chosen = self.select(ingredient)
        if ingredient is None and self.has_ingredients:
            lasts = {name: chosen.steps(name)[-1] for name in self.ingredients()}
            if len(lasts) > 1:
                raise UsageError(
                    f"the checkpoint index {self.source} has {len(lasts)} ingredients, each with its own "
                    "last checkpoint",
                    details=[f"ingredient {name}: step {step}" for name, step in lasts.items()],
                    hint="pick one with --ingredient",
                )
        return chosen.find(chosen.steps()[-1], ingredient)

    def find(self, step: int, ingredient: str | None = None) -> IndexEntry:
        """The row for `step` (the last one if listed twice); a UsageError naming the nearest steps,
        or, where several ingredients have the step and none was given, the ingredients."""
        chosen = self.select(ingredient)
        rows = [e for e in chosen.entries if e.step == step]
        having = sorted({e.ingredient for e in rows if e.ingredient is not None})
        if ingredient is None and len(having) > 1:
            raise UsageError(
                f"step {step} is in {len(having)} ingredients of the checkpoint index {self.source}",
                details=[f"ingredients with step {step}: {', '.join(self._ordered(having))}"],
                hint="pick one with --ingredient",
            )
        if rows:
            return rows[-1]
        near = chosen.nearest(step)
        where = f" (ingredient {ingredient})" if ingredient is not None else ""
        raise UsageError(
            f"step {step} is not in the checkpoint index {self.source}{where}",
            details=[f"nearest available steps: {', '.join(map(str, near))}"],
            hint="pick one of those, use --latest, or run `olmo checkpoints list` for all of them",
        )

    def _ordered(self, names: list[str]) -> list[str]:
        order = self.ingredients()
        return sorted(names, key=order.index)

    def nearest(self, step: int, count: int = 6) -> list[int]:
        """Up to `count` listed steps closest to `step`, in increasing order."""
        steps = self.steps()
        at = bisect.bisect_left(steps, step)
        window = steps[max(0, at - count) : at + count]
        return sorted(sorted(window, key=lambda s: (abs(s - step), s))[:count])


def check_model(name: str) -> str:
    if name not in _BY_NAME:
        raise UsageError(
            f"no published checkpoints for model {name!r}",
            details=[f"models with published checkpoints: {', '.join(_BY_NAME)}"],
            hint="pass one with --model, or give an index file or URL with --index",
        )
    return name


def published_model(name: str) -> PublishedModel:
    return _BY_NAME[check_model(name)]


def is_sharded_entry(model: str | None, entry: IndexEntry) -> bool:
    """Whether `entry` of `model`'s index is an OLMo-core sharded directory (`stepN/`, not `-unsharded`)."""
    if model is None or not published_model(model).sharded:
        return False
    return not entry.url.rstrip("/").endswith("-unsharded")


# run_name (lower case) in presets and upstream configs -> model name
_RUN_NAMES = {
    "olmo-1b": "1b",
    "olmo-7b": "7b",
    "olmo-7b-twin-2t": "7b-twin-2t",
    "olmo-7b-0424": "7b-0424",
    "olmo-1.7-7b": "7b-0424",
    "olmo-7b-0724": "7b-0724",
    # upstream's OLMo 2 13B stage-1 config keeps OLMo 1's style of name (there is no OLMo 1 13B)
    "olmo-13b": "olmo2-13b",
}
# OLMo 2 run names: the presets' `OLMo2-7B-stage1`, upstream's stage-2 `OLMo2-7B-stage2-seed42`, ...
_OLMO2_RUN = re.compile(r"^olmo-?2-(?P<size>1b|7b|13b|32b)(?:-.*)?$")


def model_for_config(path: Path) -> str | None:
    """The model a config file (a run's or a checkpoint's config.yaml) trains, from its run_name."""
    from olmo_cli.config.yamlio import read_yaml

    data = read_yaml(path)
    run_name = data.get("run_name") if isinstance(data, dict) else None
    if not run_name:
        return None
    name = str(run_name).lower()
    if name in _RUN_NAMES:
        return _RUN_NAMES[name]
    match = _OLMO2_RUN.match(name)
    return f"olmo2-{match['size']}" if match else None


def official_index_url(model: str, stage: int = 1) -> str:
    return published_model(model).index_url(stage)


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
            hint="a checkpoint index has one 'STEP,URL' (or 'INGREDIENT,STEP,URL') row per line",
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
            hint=_FORMAT_HINT,
        )
    rows = _rows(text, source)
    header = tuple(cell.strip().lower() for cell in rows[0][1]) if rows else ()
    if header not in (HEADER, HEADER_INGREDIENTS):
        raise ConfigError(
            f"{source} is not a checkpoint index: the first line must be 'Step,Checkpoint Directory' "
            "or 'Ingredient,Step,Checkpoint Directory'",
            hint=_FORMAT_HINT,
        )
    with_ingredients = header == HEADER_INGREDIENTS
    shape = "'INGREDIENT,STEP,URL'" if with_ingredients else "'STEP,URL'"
    entries = []
    for line, row in rows[1:]:
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{source} line {line}"
        if any(len(cell) > MAX_FIELD_CHARS for cell in row):
            raise ConfigError(
                f"{where}: a field longer than {MAX_FIELD_CHARS} characters (the limit)",
                hint=f"a checkpoint index has one {shape} row per line",
            )
        if len(row) != len(header):
            raise ConfigError(f"{where}: expected {shape} ({len(header)} cells), got {_show(row)}")
        ingredient = None
        if with_ingredients:
            ingredient = row[0].strip()
            if not _INGREDIENT.match(ingredient):
                raise ConfigError(
                    f"{where}: the ingredient {_show(row[0])} is not a name of 1 to 32 letters, digits, "
                    "'_' or '-'"
                )
            row = row[1:]
        if not _STEP.match(row[0].strip()):
            raise ConfigError(
                f"{where}: expected {shape} with a non-negative integer step, got {_show(row[0])}"
            )
        entries.append(IndexEntry(int(row[0]), _directory_url(row[1], base, where), line, ingredient))
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
            hint=_FORMAT_HINT,
        ) from None
    except OSError as exc:  # a device or FIFO too
        raise UsageError(f"cannot read the index {source}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{source} line {line}: not UTF-8 text (byte {exc.start})",
            hint="a checkpoint index is a UTF-8 CSV file with the header 'Step,Checkpoint Directory'"
            " (or 'Ingredient,Step,Checkpoint Directory')",
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
    offline_copy = cached_when_offline(location, f"reading the checkpoint index {location}", cache_dir)
    if offline_copy is not None:
        return read_index_file(offline_copy, location)
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
