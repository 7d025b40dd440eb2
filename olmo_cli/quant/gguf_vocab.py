"""A tokenizer.json byte-level BPE as llama.cpp's GGUF vocabulary: tokens, token types and merges.

Token strings stay in the byte-level alphabet (`Ġthe`), as llama.cpp's "gpt2" tokenizer model expects;
added tokens keep their text and are CONTROL when special, USER_DEFINED otherwise. Ids the tokenizer does
not use (embedding rows past its vocabulary) become `[PADn]`, UNUSED, so the list has one entry per row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from olmo_cli.errors import UsageError

__all__ = ["GgufVocab", "TokenType", "bpe_vocab"]


class TokenType(IntEnum):
    """GGUF's token types (gguf.TokenType, restated so this module needs no optional package)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


@dataclass
class GgufVocab:
    tokens: list[str]
    types: list[TokenType]
    merges: list[str]


def _is_byte_level(component: Any) -> bool:
    if not isinstance(component, dict):
        return False
    if component.get("type") == "ByteLevel":
        return True
    if component.get("type") == "Sequence":
        parts = component.get("pretokenizers") or component.get("decoders") or []
        return any(_is_byte_level(p) for p in parts)
    return False


def bpe_vocab(tokenizer_json: str, size: int) -> GgufVocab:
    """The vocabulary for `size` embedding rows; UsageError for a tokenizer llama.cpp's gpt2 model
    cannot run (not BPE, not byte-level, or more tokens than rows)."""
    data = json.loads(tokenizer_json)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(data.get("pre_tokenizer")):
        raise UsageError(
            "GGUF export needs a byte-level BPE tokenizer (GPT-2/GPT-NeoX style, as OLMo's)",
            hint=f"this tokenizer is {model.get('type')!r} with pre-tokenizer "
            f"{(data.get('pre_tokenizer') or {}).get('type')!r}",
        )
    by_id: dict[int, tuple[str, TokenType]] = {
        int(i): (token, TokenType.NORMAL) for token, i in model.get("vocab", {}).items()
    }
    for added in data.get("added_tokens") or []:
        kind = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    if by_id and max(by_id) >= size:
        raise UsageError(f"the tokenizer has ids up to {max(by_id)}, past the model's {size} embedding rows")
    tokens, types = [], []
    for i in range(size):
        token, kind = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(token)
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return GgufVocab(tokens, types, merges)
