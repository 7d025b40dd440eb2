"""Revisions of a Hugging Face model repository, through the Hub's HTTP API.

OLMo's repositories keep every intermediate checkpoint as a branch: OLMo 1's are named
`step{N}-tokens{T}` (e.g. `step1000-tokens4B`), OLMo 2's `stage1-step{N}-tokens{T}B` and
`stage2-ingredient{K}-step{N}-tokens{T}B` (e.g. `stage2-ingredient1-step11931-tokens50B`);
`GET {endpoint}/api/models/{repo}/refs` lists them.
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
_BRANCH = re.compile(
    r"^(?:stage(?P<stage>\d{1,2})-(?:ingredient(?P<ingredient>[A-Za-z0-9_]{1,32})-)?)?"
    r"step(?P<step>\d{1,18})(?:-tokens(?P<tokens>\d{1,15}(?:\.\d{1,6})?[KMBT]?))?$",
    re.IGNORECASE,
)
_SCALE = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


@dataclass(frozen=True)
class Revision:
    name: str
    step: int | None  # None for branches that are not intermediate checkpoints (main)
    tokens: int | None
    commit: str | None
    stage: int | None = None  # OLMo 2's names say the stage (1, 2); None for OLMo 1's and for main
    ingredient: str | None = None  # OLMo 2 stage 2's ingredient ("1", ...); None elsewhere

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.name,
            "step": self.step,
            "tokens": self.tokens,
            "stage": self.stage,
            "ingredient": self.ingredient,
            "commit": self.commit,
        }


def parse_tokens(text: str) -> int:
    """'4B' -> 4_000_000_000 (the branch names round to the unit shown)."""
    unit = text[-1].upper() if text[-1].isalpha() else ""
    return round(float(text[: len(text) - len(unit)]) * _SCALE[unit])


def _revision(ref: dict[str, Any]) -> Revision:
    name = str(ref.get("name", ""))
    match = _BRANCH.match(name)
    if match is None:
        return Revision(name, None, None, ref.get("targetCommit"))
    tokens = parse_tokens(match["tokens"]) if match["tokens"] else None
    stage = int(match["stage"]) if match["stage"] else None
    return Revision(name, int(match["step"]), tokens, ref.get("targetCommit"), stage, match["ingredient"])


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
    return sorted(revisions, key=_order)


def _order(r: Revision) -> tuple[Any, ...]:
    """Intermediate checkpoints by stage, ingredient (numbers in numeric order) and step; others after."""
    ingredient = r.ingredient or ""
    return (
        r.step is None,
        r.stage or 0,
        not ingredient.isdigit(),
        int(ingredient) if ingredient.isdigit() else 0,
        ingredient,
        r.step or 0,
        r.name,
    )
