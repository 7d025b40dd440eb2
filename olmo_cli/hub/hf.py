"""Revisions of a Hugging Face model repository, through the Hub's HTTP API.

OLMo's repositories keep every intermediate checkpoint as a branch named `step{N}-tokens{T}`
(e.g. `step1000-tokens4B`); `GET {endpoint}/api/models/{repo}/refs` lists them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from olmo_cli.errors import NetworkError
from olmo_cli.hub.http import RetryPolicy, as_network_error, check_status, is_transient_error, request

__all__ = ["DEFAULT_ENDPOINT", "Revision", "list_revisions", "parse_tokens"]

DEFAULT_ENDPOINT = "https://huggingface.co"
_BRANCH = re.compile(r"^step(?P<step>\d+)(?:-tokens(?P<tokens>\d+(?:\.\d+)?[KMBT]?))?$", re.IGNORECASE)
_SCALE = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


@dataclass(frozen=True)
class Revision:
    name: str
    step: int | None  # None for branches that are not intermediate checkpoints (main)
    tokens: int | None
    commit: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"revision": self.name, "step": self.step, "tokens": self.tokens, "commit": self.commit}


def parse_tokens(text: str) -> int:
    """'4B' -> 4_000_000_000 (the branch names round to the unit shown)."""
    unit = text[-1].upper() if text[-1].isalpha() else ""
    return round(float(text[: len(text) - len(unit)]) * _SCALE[unit])


def _revision(ref: dict[str, Any]) -> Revision:
    name = str(ref.get("name", ""))
    match = _BRANCH.match(name)
    step = int(match["step"]) if match else None
    tokens = parse_tokens(match["tokens"]) if match and match["tokens"] else None
    return Revision(name, step, tokens, ref.get("targetCommit"))


def _get_json(url: str, headers: dict[str, str], policy: RetryPolicy) -> Any:
    failures = 0
    while True:
        try:
            with request("GET", url, headers=headers, timeout=policy.timeout) as response:
                check_status(response, url, what="repository")
                return response.json()
        except NetworkError:
            raise
        except Exception as exc:
            if not is_transient_error(exc):
                if isinstance(exc, ValueError):  # not JSON
                    raise
                raise as_network_error(exc, url) from exc
            failures += 1
            if failures >= policy.attempts:
                raise NetworkError(f"{url}: {exc}", hint="check the network and try again") from exc
            time.sleep(policy.delay(failures))


def list_revisions(
    repo: str, *, endpoint: str | None = None, token: str | None = None, policy: RetryPolicy | None = None
) -> list[Revision]:
    """The repository's branches, intermediate checkpoints sorted by step, other branches after them."""
    url = f"{(endpoint or DEFAULT_ENDPOINT).rstrip('/')}/api/models/{repo}/refs"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        data = _get_json(url, headers, policy or RetryPolicy())
    except NetworkError as exc:
        if "HTTP 404" in exc.message or "HTTP 401" in exc.message:
            raise NetworkError(
                f"Hugging Face repository {repo} not found at {endpoint or DEFAULT_ENDPOINT}",
                hint="check the name; for a private or gated repository set HF_TOKEN",
            ) from exc
        raise
    except ValueError as exc:  # not JSON
        raise NetworkError(f"{url} did not answer with JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("branches"), list):
        raise NetworkError(f"{url}: unexpected answer (no 'branches' list)")
    revisions = [_revision(ref) for ref in data["branches"] if isinstance(ref, dict)]
    return sorted(revisions, key=lambda r: (r.step is None, r.step or 0, r.name))
