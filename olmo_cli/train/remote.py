"""Checkpoints on an object store, as the trainer uses them (docs/format.md §4.9): `load_path: s3://…`
and `olmo resume --load-path s3://…` download a checkpoint into a cache directory and load it as a local
one; `remote_save_folder` is checked before a run starts.

A URL names a checkpoint (`s3://bucket/run/step20-unsharded`) or a run (`s3://bucket/run`: its newest
complete checkpoint, highest step, sharded before unsharded on a tie). Only a complete checkpoint (its
`olmo-upload.json` present) is downloaded, verified file by file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from olmo_cli.checkpoint.layout import UNSHARDED_SUFFIX, parse_step
from olmo_cli.errors import CheckpointError, ConfigError, NetworkError
from olmo_cli.hub.objstore import Store, StoreURL, is_store_url, open_store, parse_store_url
from olmo_cli.train.events import DataProgress, EventSink, Message

if TYPE_CHECKING:
    from olmo_cli.config.schema import TrainConfig

__all__ = [
    "cache_dir",
    "check_remote_save",
    "check_store_clients",
    "fetch_checkpoint",
    "is_store_url",
    "latest_checkpoint_url",
    "resolve_checkpoint_url",
]

_ENDPOINT_HINT = (
    "check the credentials and where the store is: AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for an "
    "S3-compatible server, R2_ENDPOINT_URL for r2://, WEKA_ENDPOINT_URL for weka://; credentials from "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile (S3_PROFILE, R2_PROFILE, AWS_PROFILE); "
    "GOOGLE_APPLICATION_CREDENTIALS for gs://"
)


def cache_dir(url: StoreURL) -> Path:
    """Where a remote checkpoint downloads to: `$XDG_CACHE_HOME/olmo/remote-checkpoints/SCHEME/BUCKET/
    RUN_PREFIX/` (default `~/.cache`), the checkpoint directory inside it."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    parts = [url.scheme, url.bucket, *[p for p in url.parent.prefix.split("/") if p]]
    return Path(base, "olmo", "remote-checkpoints", *parts)


def _reached(what: str, fn):  # type: ignore[no-untyped-def]
    """`fn()`, with a store that cannot be reached said as such, and how to point olmo at it."""
    try:
        return fn()
    except NetworkError as e:
        raise NetworkError(f"{what}: {e.message}", hint=_ENDPOINT_HINT) from e


def latest_checkpoint_url(run: StoreURL, store: Store | None = None) -> StoreURL | None:
    """The newest complete checkpoint under the run URL `run`, if any."""
    from olmo_cli.hub.remote_checkpoints import complete_checkpoints

    store = store or open_store(run)
    found = _reached(f"listing {run}", lambda: complete_checkpoints(store, run))
    names = [n for n in found if parse_step(n) is not None]
    if not names:
        return None
    best = max(names, key=lambda n: (parse_step(n), not n.endswith(UNSHARDED_SUFFIX)))
    return run.child(best)


def resolve_checkpoint_url(text: str, store: Store | None = None) -> StoreURL:
    """The checkpoint a URL means: itself when its last part is a checkpoint name, else the newest complete
    checkpoint of the run it names."""
    url = parse_store_url(text, what="the checkpoint URL")
    if parse_step(url.name) is not None:
        return url
    found = latest_checkpoint_url(url, store)
    if found is None:
        raise CheckpointError(
            f"no complete checkpoint (stepN/ or stepN-unsharded/ with its olmo-upload.json) under {url}",
            hint="give a checkpoint URL such as RUN_URL/step1000-unsharded, or the URL a run uploads to",
        )
    return found


def fetch_checkpoint(text: str, events: EventSink, dest: Path | None = None) -> Path:
    """Downloads the checkpoint the URL `text` names into `dest` (default: `cache_dir`) and returns its
    directory; what it does and its progress are `events` (a Message, then DataProgress in bytes)."""
    from olmo_cli.hub.remote_checkpoints import download_checkpoint

    store = open_store(parse_store_url(text, what="the checkpoint URL"))
    url = resolve_checkpoint_url(text, store)
    what = f"downloading {url}"

    def progress(done: int, total: int) -> None:
        events(DataProgress(what, done, total))

    return _reached(
        what,
        lambda: download_checkpoint(
            store, url, dest or cache_dir(url), report=lambda t: events(Message(t)), progress=progress
        ),
    )


def check_store_clients(cfg: TrainConfig) -> None:
    """The client library (and, for r2:// and weka://, the endpoint variable) that `remote_save_folder`
    and a `load_path` URL need are there: ConfigError naming `pip install 'olmo-cli[s3]'` otherwise.
    Nothing is sent over the network."""
    if cfg.remote_save_folder is not None:  # a local path or another scheme is a ConfigError
        open_store(parse_store_url(cfg.remote_save_folder))
    if cfg.load_path is not None and is_store_url(cfg.load_path):
        open_store(parse_store_url(cfg.load_path, what="load_path"))


def check_remote_save(cfg: TrainConfig, *, continuing: bool, events: EventSink) -> None:
    """Before a run with `remote_save_folder` claims its directory: the store answers (a wrong endpoint or
    credentials fail here, not at the first checkpoint), and a new run does not mix its checkpoints into
    another run's there (as for the local save folder; `save_overwrite` allows it). Says where it uploads."""
    if cfg.remote_save_folder is None:
        return
    url = parse_store_url(cfg.remote_save_folder)
    latest = latest_checkpoint_url(url)
    if latest is not None and not continuing and not cfg.save_overwrite:
        raise ConfigError(
            f"remote_save_folder {url} already holds a run (checkpoints up to {latest.name})",
            hint=f"`olmo resume --load-path {latest}` continues it; another remote_save_folder starts a new "
            "run; --set save_overwrite=true replaces its checkpoints as they are saved",
        )
    events(
        Message(
            f"checkpoints are uploaded to {url} as they are saved (in the background; retention applies "
            "there too)"
        )
    )
