"""The only exceptions a user sees. The engine raises them; `app.py` renders them as one message."""

from __future__ import annotations


class OlmoError(Exception):
    """Something the user can fix: what went wrong, where, and how to fix it.

    `exit_code` follows docs/architecture.md rule 4: 2 usage/config, 3 data, 4 checkpoint, 5 network.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details or []

    def __str__(self) -> str:
        lines = [self.message, *("  " + d for d in self.details)]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class UsageError(OlmoError):
    exit_code = 2


class ConfigError(OlmoError):
    exit_code = 2


class DataError(OlmoError):
    exit_code = 3


class CheckpointError(OlmoError):
    exit_code = 4


class NetworkError(OlmoError):
    exit_code = 5
