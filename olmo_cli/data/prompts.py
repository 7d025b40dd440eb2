"""Prompts as token ids, the one way `olmo generate`, `olmo chat` and the Python API encode them.

A plain prompt is its text's base encoding with no special tokens (OLMo has no BOS; an empty prompt is
the EOS that starts a fresh document). A conversation is rendered with the chat format of the models
trained with this tokenizer (`chat.chat_format_for`: OLMo 2's for dolma2, else Tulu's), ending in the
header of the assistant turn to generate.

`fit_conversation` keeps a conversation inside a model's context: it drops the oldest turns (a system
message stays) until the prompt and the tokens to generate fit, or only the newest turn is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from olmo_cli.data.chat import Message, chat_format_for, render_prompt
from olmo_cli.data.tokenizer import ResolvedTokenizer

__all__ = ["FittedConversation", "chat_prompt_ids", "fit_conversation", "prompt_ids"]


def prompt_ids(text: str, tokenizer: ResolvedTokenizer) -> list[int]:
    """A plain prompt: the text's tokens, or [EOS] for an empty one."""
    return tokenizer.encode(text, add_special_tokens=False) or [tokenizer.identity.eos_token_id]


def chat_prompt_ids(messages: Sequence[Message], tokenizer: ResolvedTokenizer) -> list[int]:
    """The conversation so far, rendered in the tokenizer's chat format, then `<|assistant|>\\n`."""
    identity = tokenizer.identity
    eos = identity.eos_token_id
    style = chat_format_for(identity.identifier, identity.vocab_size, eos)
    return render_prompt(list(messages), tokenizer.tokenizer, eos, tokenizer.eos_token, style)


@dataclass
class FittedConversation:
    messages: list[Message]  # what the prompt holds
    ids: list[int]
    dropped: int  # oldest messages left out (never a system message)
    fits: bool = True  # False: even the newest turn alone (with the system messages) is too long


def fit_conversation(
    messages: Sequence[Message], tokenizer: ResolvedTokenizer, *, context: int, max_new_tokens: int
) -> FittedConversation:
    """The longest suffix of the conversation whose prompt plus `max_new_tokens` fits in `context` tokens.

    Leading system messages always stay; other messages go oldest first, a whole exchange at a time (a
    user turn with the replies after it), never the newest user turn."""
    messages = list(messages)
    head = 0
    while head < len(messages) and messages[head][0] == "system":
        head += 1
    system, turns = messages[:head], messages[head:]
    dropped = 0
    while True:
        kept = system + turns[dropped:]
        ids = chat_prompt_ids(kept, tokenizer)
        if len(ids) + max_new_tokens <= context:
            return FittedConversation(kept, ids, dropped)
        later = [i for i in range(dropped + 1, len(turns)) if turns[i][0] == "user"]
        if not later:
            return FittedConversation(kept, ids, dropped, fits=False)
        dropped = later[0]
