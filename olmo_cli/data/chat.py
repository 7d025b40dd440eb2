"""The OLMo chat formats, in one place: `olmo data tokenize --chat` renders training examples with them
and `olmo generate --chat` renders prompts with them.

"tulu" (OLMo 1; upstream's scripts/prepare_tulu_data.py, docs/format.md §3.4) makes a conversation

    [EOS] <|user|>\\n {user text}\\n <|assistant|>\\n {assistant text}{EOS text}\\n ...

with every text stripped of surrounding whitespace. "olmo2" (the chat template of OLMo 2's SFT and
instruct models, Tulu 3's) is the same with the texts as they are and no newline after the last
assistant turn's EOS; its BOS is the same EOS token. The prompt for a new assistant turn ends in
`<|assistant|>\\n` in both.

Each piece is encoded on its own (so token boundaries fall where upstream's do) with no special tokens
added. Only the assistant's text and its EOS count for the loss (label mask True); its closing newline,
the role headers, the other turns and the leading EOS do not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer

Message = tuple[str, str]  # (role, content)
CHAT_FORMATS = ("tulu", "olmo2")
# OLMo 2's tokenizer (dolma2): 100278 ids, <|endoftext|> at 100257
_DOLMA2 = ("allenai_dolma2.json", 100278, 100257)


def chat_format_for(identifier: str, vocab_size: int, eos_token_id: int) -> str:
    """The chat format of the models trained with this tokenizer: "olmo2" for dolma2, else "tulu"."""
    name, size, eos = _DOLMA2
    if identifier.endswith(name) or (vocab_size == size and eos_token_id == eos):
        return "olmo2"
    return "tulu"


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
    messages: list[Message], tokenizer: Tokenizer, eos_token_id: int, eos_text: str, style: str = "tulu"
) -> tuple[list[int], list[bool]]:
    """A whole conversation for training: token ids and the label mask (True = counts for the loss)."""
    if style not in CHAT_FORMATS:
        raise ValueError(f"unknown chat format {style!r}; one of {', '.join(CHAT_FORMATS)}")
    ids, mask = [eos_token_id], [False]
    for i, (role, content) in enumerate(messages):
        text = content.strip() if style == "tulu" else content
        header = _header(tokenizer, role)
        ids += header
        mask += [False] * len(header)
        if role == "assistant":
            closing = "" if style == "olmo2" and i == len(messages) - 1 else "\n"
            body = _encode(tokenizer, text + eos_text + closing)
            ids += body
            # the closing newline is not the model's to predict
            mask += [True] * (len(body) - len(closing)) + [False] * len(closing)
        else:
            body = _encode(tokenizer, text + "\n")
            ids += body
            mask += [False] * len(body)
    return ids, mask


def render_prompt(
    messages: list[Message], tokenizer: Tokenizer, eos_token_id: int, eos_text: str, style: str = "tulu"
) -> list[int]:
    """The prompt for generating the next assistant turn: the conversation so far, then `<|assistant|>\\n`."""
    ids, _ = render_conversation(messages, tokenizer, eos_token_id, eos_text, style)
    return ids + _header(tokenizer, "assistant")
