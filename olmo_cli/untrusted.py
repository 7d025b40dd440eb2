"""Reading small files that come from elsewhere (configs, manifests, indexes, a checkpoint's JSON) so that
no such file can hang the process or fill its memory: only regular files are opened (a FIFO would block
the open, a device such as /dev/zero never ends), and never more than a limit is read."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from olmo_cli.errors import OlmoError

__all__ = ["NotARegularFile", "TooLarge", "read_limited", "read_json_text"]


class TooLarge(ValueError):
    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(f"{path} is larger than {limit:,} bytes")
        self.limit = limit


class NotARegularFile(OSError):
    pass


def read_limited(path: Path | str, limit: int) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes (symlinks followed). Raises TooLarge,
    NotARegularFile, or the OSError of the open/read."""
    path = Path(path)
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    if not stat.S_ISREG(mode):
        raise NotARegularFile(f"{path} is not a regular file")
    with open(path, "rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise TooLarge(path, limit)
    return raw


def read_json_text(path: Path | str, *, limit: int, error: type[OlmoError], what: str) -> str:
    """The UTF-8 text of `path` (see `read_limited`), each failure one `error` naming `what` and the file."""
    try:
        return read_limited(path, limit).decode("utf-8")
    except TooLarge:
        raise error(f"{path} is larger than {limit >> 20} MiB: not {what}") from None
    except (NotARegularFile, IsADirectoryError):
        raise error(f"{path} is not a regular file (a device, FIFO or directory): not {what}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text (byte {e.start}): not {what}") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
