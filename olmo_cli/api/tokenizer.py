"""The checkpoint's tokenizer as the Python API hands it out: text <-> ids, the special ids, the chat
prompt, with the same rules `olmo generate` and `olmo data tokenize` use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer as BackendTokenizer

    from olmo_cli.data.tokenizer import ResolvedTokenizer

__all__ = ["Tokenizer", "as_messages"]


def as_messages(messages: Sequence[Any]) -> list[tuple[str, str]]:
    """`[{"role": ..., "content": ...}, ...]` or `[(role, content), ...]` -> checked (role, content) pairs."""
    from olmo_cli.data.chat import ChatFormatError, parse_messages
    from olmo_cli.errors import UsageError

    records = [
        {"role": m[0], "content": m[1]} if isinstance(m, tuple) and len(m) == 2 else m for m in messages
    ]
    try:
        return parse_messages({"messages": records})
    except ChatFormatError as e:
        raise UsageError(
            f"not a list of chat messages: {e}",
            hint='give [{"role": "user", "content": "..."}, ...] (roles: system, user, assistant)',
        ) from None


class Tokenizer:
    """Encodes and decodes as the model was trained: no BOS (OLMo has none), EOS only when asked."""

    def __init__(self, resolved: ResolvedTokenizer) -> None:
        self.resolved = resolved

    @property
    def backend(self) -> BackendTokenizer:
        """The `tokenizers.Tokenizer` underneath."""
        return self.resolved.tokenizer

    @property
    def identifier(self) -> str:
        return self.resolved.identity.identifier

    @property
    def vocab_size(self) -> int:
        return self.resolved.identity.vocab_size

    @property
    def eos_token_id(self) -> int:
        return self.resolved.identity.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.resolved.identity.pad_token_id

    @property
    def eos_token(self) -> str:
        return self.resolved.eos_token

    def encode(self, text: str, *, add_eos: bool = False) -> list[int]:
        """The text's token ids; `add_eos` appends EOS as `olmo data tokenize` ends each document."""
        return self.resolved.encode(text, add_special_tokens=add_eos)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.resolved.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def chat_prompt(self, messages: Sequence[Any]) -> list[int]:
        """The ids `olmo generate --chat` feeds the model for this conversation: it in the chat format of
        this tokenizer's models, then the header of the assistant's turn."""
        from olmo_cli.data.prompts import chat_prompt_ids

        return chat_prompt_ids(as_messages(messages), self.resolved)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({self.identifier!r}, vocab_size={self.vocab_size}, eos={self.eos_token_id})"
