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

__all__ = ["GgufVocab", "TokenType", "bpe_vocab", "pre_tokenizer_name"]

# The split regex of cl100k-style tokenizers (OLMo 2's dolma2 among them), which llama.cpp runs as its
# "dbrx" pre-tokenizer; GPT-2's own regex (ByteLevel with use_regex) is its "olmo" one.
CL100K_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


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


def pre_tokenizer_name(tokenizer_json: str) -> str:
    """llama.cpp's name for how this byte-level BPE splits text before merging: "olmo" for GPT-2's regex
    (OLMo 1's tokenizers), "dbrx" for cl100k's (OLMo 2's dolma2); a UsageError for any other split."""
    pre = json.loads(tokenizer_json).get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "olmo"
    parts = pre.get("pretokenizers") or [] if pre.get("type") == "Sequence" else []
    splits = [p for p in parts if isinstance(p, dict) and p.get("type") == "Split"]
    patterns = [(p.get("pattern") or {}).get("Regex") for p in splits]
    if patterns == [CL100K_SPLIT] and splits[0].get("behavior") == "Removed" and splits[0].get("invert"):
        return "dbrx"
    raise UsageError(
        "GGUF export knows the GPT-2 and cl100k pre-tokenizers (OLMo 1's and OLMo 2's), not this one",
        hint=f"this tokenizer splits with {json.dumps(pre)[:200]}",
    )
