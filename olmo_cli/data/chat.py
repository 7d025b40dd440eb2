"""The OLMo/Tulu chat format, in one place: `olmo data tokenize --chat` renders training examples with it
and `olmo generate --chat` renders prompts with it.

A conversation becomes (upstream's scripts/prepare_tulu_data.py, docs/format.md §3.4):

    [EOS] <|user|>\\n {user text}\\n <|assistant|>\\n {assistant text}{EOS text}\\n ...

Each piece is encoded on its own (so token boundaries fall where upstream's do) with no special tokens
added. Only the assistant's text and its EOS count for the loss (label mask True); its closing newline,
the role headers, the other turns and the leading EOS do not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer

Message = tuple[str, str]  # (role, content)


class ChatFormatError(ValueError):
    """A record that is not a messages-format conversation."""


def parse_messages(record: dict[str, Any]) -> list[Message]:
    """`{"messages": [{"role": ..., "content": ...}, ...]}` -> [(role, content), ...], checked."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError(
            'no `messages` list (chat records look like {"messages": [{"role", "content"}]})'
        )
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatFormatError(f"messages[{i}] is {type(message).__name__}, not an object")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise ChatFormatError(f"messages[{i}] has no `role` string")
        if not isinstance(content, str):
            raise ChatFormatError(f"messages[{i}] has no `content` string")
        parsed.append((role, content))
    return parsed


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def _header(tokenizer: Tokenizer, role: str) -> list[int]:
    return _encode(tokenizer, f"<|{role}|>\n")


def render_conversation(
    messages: list[Message], tokenizer: Tokenizer, eos_token_id: int, eos_text: str
) -> tuple[list[int], list[bool]]:
    """A whole conversation for training: token ids and the label mask (True = counts for the loss)."""
    ids, mask = [eos_token_id], [False]
    for role, content in messages:
        header = _header(tokenizer, role)
        ids += header
        mask += [False] * len(header)
        if role == "assistant":
            body = _encode(tokenizer, content.strip() + eos_text + "\n")
            ids += body
            mask += [True] * (len(body) - 1) + [False]  # the closing newline is not the model's to predict
        else:
            body = _encode(tokenizer, content.strip() + "\n")
            ids += body
            mask += [False] * len(body)
    return ids, mask


def render_prompt(
    messages: list[Message], tokenizer: Tokenizer, eos_token_id: int, eos_text: str
) -> list[int]:
    """The prompt for generating the next assistant turn: the conversation so far, then `<|assistant|>\\n`."""
    ids, _ = render_conversation(messages, tokenizer, eos_token_id, eos_text)
    return ids + _header(tokenizer, "assistant")
