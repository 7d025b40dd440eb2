"""A conversation with a model, turn by turn: what `olmo chat` runs, usable from Python too.

Each reply is generated from the whole conversation so far, rendered in the checkpoint's chat format
(`data.prompts`); when it and the reply's token budget outgrow the model's context, the oldest
exchanges are left out of the prompt (the system message stays) and `ChatReply.dropped` says how many
messages. A first user turn without a system message is exactly `olmo generate --chat -p TEXT`.

Saved conversations are one JSON Lines record, `{"messages": [{"role": ..., "content": ...}, ...]}`:
the chat format `olmo data tokenize --chat` and `olmo generate --prompts-file` read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from olmo_cli.errors import UsageError

if TYPE_CHECKING:
    from olmo_cli.api.model import Model
    from olmo_cli.data.prompts import FittedConversation
    from olmo_cli.model.generate import Completion, GenerationSettings

__all__ = ["ChatReply", "ChatSession"]


@dataclass
class ChatReply:
    text: str
    completion: Completion  # token ids, prompt length, why it stopped
    dropped: int  # oldest messages left out of the prompt to fit the context
    fits: bool  # False: even the newest turn alone is longer than the context allows
    prompt_tokens: int


class ChatSession:
    """`reply(text)` adds a user turn and the model's answer to `messages`; `system` is the system
    message (None: none); `reset()` forgets the turns and keeps the system message."""

    def __init__(
        self,
        model: Model,
        *,
        system: str | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.settings: GenerationSettings = model.settings(max_new_tokens, temperature, top_k, top_p, seed)
        self.stop = list(stop)
        self.system = system or None
        self.turns: list[tuple[str, str]] = []

    @property
    def messages(self) -> list[tuple[str, str]]:
        """The whole conversation, the system message first."""
        return ([("system", self.system)] if self.system else []) + self.turns

    def reset(self) -> None:
        self.turns = []

    def reply(
        self,
        text: str,
        *,
        on_text: Callable[[str], None] | None = None,
        on_fitted: Callable[[FittedConversation], None] | None = None,
    ) -> ChatReply:
        """The model's answer to a new user turn; `on_text(piece)` streams it, `on_fitted` is told what the
        prompt holds before generation starts. Interrupted (KeyboardInterrupt in `on_text` or the model),
        the text shown so far is kept as the answer and the KeyboardInterrupt goes on."""
        from olmo_cli.data.prompts import fit_conversation

        fitted = fit_conversation(
            [*self.messages, ("user", text)],
            self.model.tokenizer.resolved,
            context=self.model.max_sequence_length,
            max_new_tokens=self.settings.max_new_tokens,
        )
        if on_fitted is not None:
            on_fitted(fitted)
        shown: list[str] = []

        def piece(_row: int, delta: str) -> None:
            shown.append(delta)
            if on_text is not None:
                on_text(delta)

        self.turns.append(("user", text))
        try:
            completion = self.model.complete([fitted.ids], self.settings, stop=self.stop, on_text=piece)[0]
        except KeyboardInterrupt:
            self.turns.append(("assistant", "".join(shown)))
            raise
        except BaseException:
            self.turns.pop()
            raise
        self.turns.append(("assistant", completion.text))
        return ChatReply(completion.text, completion, fitted.dropped, fitted.fits, len(fitted.ids))

    def as_record(self) -> dict[str, Any]:
        return {"messages": [{"role": role, "content": content} for role, content in self.messages]}

    def save(self, path: str | Path) -> Path:
        """Writes the conversation (atomically) as one JSON Lines record; UsageError when it cannot."""
        from olmo_cli.atomic import atomic_write_text

        target = Path(path).expanduser()
        if target.is_dir():
            raise UsageError(f"{target} is a directory", hint="give a file name, e.g. chat.jsonl")
        try:
            atomic_write_text(target, json.dumps(self.as_record(), ensure_ascii=False) + "\n")
        except OSError as e:
            raise UsageError(
                f"cannot write {target}: {e.strerror or e}",
                hint="give a path in a directory you can write to",
            ) from None
        return target
