"""From API requests to engine requests and back: prompts tokenized (chat in the checkpoint's chat
format), settings checked, the engine's events turned into the OpenAI API's responses and stream chunks.

Everything here is asynchronous on the server's event loop; the engine runs on its own thread and its
events cross over with `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from olmo_cli.serve.engine import (
    Engine,
    EngineRequest,
    Event,
    Failed,
    Finished,
    QueueFull,
    Token,
    TopLogprobs,
)
from olmo_cli.serve.protocol import ApiError, ChatRequest, CompletionRequest

if TYPE_CHECKING:
    from olmo_cli.api.model import Model

__all__ = ["Service"]

RETRY_AFTER_S = 1
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


DISCONNECT_POLL_S = 0.5
_GONE = object()  # put in a choice's queue when its client has gone


class _Bridge:
    """Events from the engine thread to queues on the event loop, in bursts: one `call_soon_threadsafe`
    for all the events posted while the loop had not yet taken the last ones (a decode step posts one
    per running request), not one per event."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[Any], Any]] = []

    def post(self, queue: asyncio.Queue[Any], event: Any) -> None:
        with self._lock:
            self._pending.append((queue, event))
            first = len(self._pending) == 1
        if first:  # otherwise a drain is already scheduled and will take this one too
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        for queue, event in batch:
            queue.put_nowait(event)


@dataclass
class _Choice:
    """One engine request of an API request, and the events it has sent."""

    index: int
    request: EngineRequest
    events: asyncio.Queue[Any]  # engine events, or _GONE


class Service:
    """The served model: `completion` and `chat` answer one API request each (a dict, or an async
    iterator of stream chunks); `disconnected` is polled to cancel the work of a client that left."""

    def __init__(self, model: Model, engine: Engine, name: str) -> None:
        self.model = model
        self.engine = engine
        self.name = name
        self.created = int(time.time())
        self.tokenizer = model.tokenizer.resolved
        self.context = engine.context
        self._bridge: _Bridge | None = None

    # ---- what the endpoints call -------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "olmo"}

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.name:
            raise ApiError(
                404,
                f"the model {name!r} does not exist; this server serves {self.name!r}",
                param="model",
                code="model_not_found",
            )

    async def completion(self, body: CompletionRequest, disconnected: Callable[[], Awaitable[bool]]) -> Any:
        self.check_model(body.model)
        prompts = self._completion_prompts(body.prompt)
        most = self.engine.max_batch + self.engine.max_queue
        if len(prompts) * body.n > most:
            raise ApiError(
                400,
                f"{len(prompts)} prompts x n={body.n} are {len(prompts) * body.n} completions; this server "
                f"takes at most {most} at once (--max-batch + --max-queue)",
                param="prompt",
            )
        score_only = body.max_tokens == 0
        choices: list[_Choice] = []
        for p, ids in enumerate(prompts):
            for i in range(body.n):
                request = self._engine_request(
                    ids,
                    body,
                    body.max_tokens or 1,
                    seed_offset=i,
                    logprobs=body.logprobs,
                    prompt_logprobs=body.echo and body.logprobs is not None,
                    score_only=score_only,
                )
                choices.append(_Choice(p * body.n + i, request, asyncio.Queue()))
        self._submit(choices)
        texts = [self.tokenizer.decode(ids, skip_special_tokens=False) for ids in prompts]
        ident = f"cmpl-{secrets.token_hex(12)}"
        if body.stream:
            return self._stream_completion(body, choices, prompts, texts, ident, disconnected)
        finished = await self._collect(choices, disconnected)
        out, completion_tokens = [], 0
        for choice, (tokens, done) in zip(choices, finished, strict=True):
            prompt_index = choice.index // body.n
            text = (texts[prompt_index] if body.echo else "") + done.text
            completion_tokens += len(done.token_ids)
            logprobs = None
            if body.logprobs is not None:
                logprobs = self._completion_logprobs(
                    prompts[prompt_index] if body.echo else [],
                    done.prompt_logprobs if body.echo else None,
                    tokens,
                    0 if body.echo else len(texts[prompt_index]),
                )
            reason = FINISH[done.reason]
            out.append({"text": text, "index": choice.index, "logprobs": logprobs, "finish_reason": reason})
        return {
            "id": ident,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": out,
            "usage": _usage(sum(len(p) for p in prompts) * body.n, completion_tokens),
        }

    async def chat(self, body: ChatRequest, disconnected: Callable[[], Awaitable[bool]]) -> Any:
        from olmo_cli.data.prompts import chat_prompt_ids

        self.check_model(body.model)
        messages = [("system" if m.role == "developer" else m.role, m.text()) for m in body.messages]
        if messages[-1][0] == "assistant":
            raise ApiError(400, "the last message is the assistant's: nothing to reply to", param="messages")
        ids = chat_prompt_ids(messages, self.tokenizer)
        budget = body.budget
        if budget is None:  # as many as fit, as the API does
            budget = min(self.context, self.engine.max_tokens_in_flight) - len(ids)
            if budget < 1:
                raise self._too_long(len(ids), 1)
        top = (body.top_logprobs or 0) if body.logprobs else None
        choices = [
            _Choice(i, self._engine_request(ids, body, budget, seed_offset=i, logprobs=top), asyncio.Queue())
            for i in range(body.n)
        ]
        self._submit(choices)
        ident = f"chatcmpl-{secrets.token_hex(12)}"
        if body.stream:
            return self._stream_chat(body, choices, len(ids), ident, disconnected)
        finished = await self._collect(choices, disconnected)
        out, completion_tokens = [], 0
        for choice, (tokens, done) in zip(choices, finished, strict=True):
            completion_tokens += len(done.token_ids)
            logprobs = {"content": [self._chat_logprob(t) for t in tokens]} if body.logprobs else None
            out.append(
                {
                    "index": choice.index,
                    "message": {"role": "assistant", "content": done.text},
                    "logprobs": logprobs,
                    "finish_reason": FINISH[done.reason],
                }
            )
        return {
            "id": ident,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": out,
            "usage": _usage(len(ids) * body.n, completion_tokens),
        }

    # ---- requests to the engine -----------------------------------------------------------------------

    def _completion_prompts(self, prompt: Any) -> list[list[int]]:
        from olmo_cli.data.prompts import prompt_ids

        if isinstance(prompt, str):
            return [prompt_ids(prompt, self.tokenizer)]
        if all(isinstance(p, str) for p in prompt):
            return [prompt_ids(p, self.tokenizer) for p in prompt]
        lists = [prompt] if all(isinstance(p, int) for p in prompt) else prompt
        vocab = self.model.config.model.vocab_size
        for ids in lists:
            bad = next((t for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise ApiError(
                    400, f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param="prompt"
                )
        return [list(ids) for ids in lists]

    def _engine_request(
        self,
        ids: list[int],
        body: CompletionRequest | ChatRequest,
        max_tokens: int,
        *,
        seed_offset: int,
        logprobs: int | None,
        prompt_logprobs: bool = False,
        score_only: bool = False,
    ) -> EngineRequest:
        from olmo_cli.model.generate import GenerationSettings

        identity = self.tokenizer.identity
        seed = None if body.seed is None else body.seed + seed_offset
        try:
            settings = GenerationSettings(
                max_tokens,
                body.temperature,
                body.top_k_or_none,
                body.top_p if body.top_p < 1 else None,
                seed,
                None if body.ignore_eos else identity.eos_token_id,
                identity.pad_token_id,
            )
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        needed = len(ids) + (0 if score_only else max_tokens)
        if needed > self.context:
            raise self._too_long(len(ids), 0 if score_only else max_tokens)
        return EngineRequest(
            ids,
            settings,
            lambda event: None,  # replaced in _submit, once the queue exists on the loop
            self.tokenizer.decode,
            stop=body.stop or (),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            score_only=score_only,
        )

    def _too_long(self, prompt: int, new: int) -> ApiError:
        return ApiError(
            400,
            f"this model's context is {self.context} tokens; the request has {prompt} prompt tokens and asks "
            f"for {new} more",
            param="messages" if new <= 1 else "max_tokens",
            code="context_length_exceeded",
        )

    def _submit(self, choices: list[_Choice]) -> None:
        loop = asyncio.get_running_loop()
        if self._bridge is None or self._bridge.loop is not loop:
            self._bridge = _Bridge(loop)
        bridge = self._bridge
        for choice in choices:

            def on_event(event: Event, queue: asyncio.Queue[Any] = choice.events) -> None:
                bridge.post(queue, event)

            choice.request.on_event = on_event
        submitted: list[_Choice] = []
        try:
            for choice in choices:
                self.engine.submit(choice.request)
                submitted.append(choice)
        except QueueFull as e:
            for choice in submitted:
                choice.request.cancel()
            raise ApiError(
                503,
                f"the server is busy ({e}); retry in a moment",
                kind="server_error",
                code="server_busy",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        except ValueError as e:
            for choice in submitted:
                choice.request.cancel()
            raise ApiError(400, str(e), code="context_length_exceeded") from None

    def _watch(
        self, choices: list[_Choice], disconnected: Callable[[], Awaitable[bool]]
    ) -> asyncio.Task[None]:
        """A task that checks every DISCONNECT_POLL_S whether the client has gone; if so it cancels the
        choices (freeing their slots) and ends their event streams."""

        async def watch() -> None:
            while True:
                await asyncio.sleep(DISCONNECT_POLL_S)
                if await disconnected():
                    for choice in choices:
                        choice.request.cancel()
                        choice.events.put_nowait(_GONE)
                    return

        return asyncio.create_task(watch())

    async def _events(self, choice: _Choice) -> AsyncIterator[Token | Finished]:
        """The choice's events until it finishes, or until its client has gone (`_watch`)."""
        while True:
            event = await choice.events.get()
            if event is _GONE:
                return
            if isinstance(event, Failed):
                raise _engine_error(event.error)
            yield event
            if isinstance(event, Finished):
                return

    async def _collect(
        self, choices: list[_Choice], disconnected: Callable[[], Awaitable[bool]]
    ) -> list[tuple[list[Token], Finished]]:
        async def one(choice: _Choice) -> tuple[list[Token], Finished]:
            tokens: list[Token] = []
            async for event in self._events(choice):
                if isinstance(event, Finished):
                    return [t for t in tokens if t.token_id >= 0], event
                tokens.append(event)
            raise ApiError(499, "the client closed the connection", code="client_closed")

        watcher = self._watch(choices, disconnected)
        try:
            return list(await asyncio.gather(*(one(c) for c in choices)))
        finally:
            watcher.cancel()
            for choice in choices:
                choice.request.cancel()  # a no-op for finished ones; frees the rest at once

    # ---- streams ---------------------------------------------------------------------------------------

    async def _merged(
        self, choices: list[_Choice], disconnected: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[tuple[_Choice, Token | Finished]]:
        """Every choice's events, interleaved as they come."""
        merged: asyncio.Queue[tuple[_Choice, Token | Finished | BaseException | None]] = asyncio.Queue()

        async def pump(choice: _Choice) -> None:
            try:
                async for event in self._events(choice):
                    await merged.put((choice, event))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                await merged.put((choice, e))
            finally:
                await merged.put((choice, None))

        tasks = [asyncio.create_task(pump(c)) for c in choices]
        tasks.append(self._watch(choices, disconnected))
        open_ = len(choices)
        try:
            while open_:
                choice, event = await merged.get()
                if event is None:
                    open_ -= 1
                elif isinstance(event, BaseException):
                    raise event
                else:
                    yield choice, event
        finally:
            for task in tasks:
                task.cancel()
            for choice in choices:
                choice.request.cancel()

    async def _stream_completion(
        self,
        body: CompletionRequest,
        choices: list[_Choice],
        prompts: list[list[int]],
        texts: list[str],
        ident: str,
        disconnected: Callable[[], Awaitable[bool]],
    ) -> AsyncIterator[dict[str, Any]]:
        created = int(time.time())

        def chunk(index: int, text: str, reason: str | None, logprobs: Any = None) -> dict[str, Any]:
            choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": reason}
            return {"id": ident, "object": "text_completion", "created": created, "model": self.name,
                    "choices": [choice]}  # fmt: skip

        if body.echo:
            for choice in choices:
                yield chunk(choice.index, texts[choice.index // body.n], None)
        completion_tokens = 0
        offsets = {c.index: 0 if body.echo else len(texts[c.index // body.n]) for c in choices}
        async for choice, event in self._merged(choices, disconnected):
            if isinstance(event, Finished):
                completion_tokens += len(event.token_ids)
                yield chunk(choice.index, "", FINISH[event.reason])
                continue
            logprobs = None
            if body.logprobs is not None and event.token_id >= 0:
                logprobs = self._completion_logprobs([], None, [event], offsets[choice.index])
                offsets[choice.index] += len(logprobs["tokens"][0])
            if event.text or logprobs is not None:
                yield chunk(choice.index, event.text, None, logprobs)
        if body.include_usage:
            usage = _usage(sum(len(p) for p in prompts) * body.n, completion_tokens)
            yield {"id": ident, "object": "text_completion", "created": created, "model": self.name,
                   "choices": [], "usage": usage}  # fmt: skip

    async def _stream_chat(
        self,
        body: ChatRequest,
        choices: list[_Choice],
        prompt_tokens: int,
        ident: str,
        disconnected: Callable[[], Awaitable[bool]],
    ) -> AsyncIterator[dict[str, Any]]:
        created = int(time.time())

        def chunk(
            index: int, delta: dict[str, Any], reason: str | None, logprobs: Any = None
        ) -> dict[str, Any]:
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": self.name,
                    "choices": [choice]}  # fmt: skip

        for choice in choices:
            yield chunk(choice.index, {"role": "assistant", "content": ""}, None)
        completion_tokens = 0
        async for choice, event in self._merged(choices, disconnected):
            if isinstance(event, Finished):
                completion_tokens += len(event.token_ids)
                yield chunk(choice.index, {}, FINISH[event.reason])
                continue
            logprobs = None
            if body.logprobs and event.token_id >= 0:
                logprobs = {"content": [self._chat_logprob(event)]}
            if event.text or logprobs is not None:
                yield chunk(choice.index, {"content": event.text}, None, logprobs)
        if body.include_usage:
            usage = _usage(prompt_tokens * body.n, completion_tokens)
            yield {"id": ident, "object": "chat.completion.chunk", "created": created, "model": self.name,
                   "choices": [], "usage": usage}  # fmt: skip

    # ---- log-probabilities -------------------------------------------------------------------------------

    def _piece(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _top(self, top: TopLogprobs | None) -> dict[str, float] | None:
        if top is None:
            return None
        out: dict[str, float] = {}
        for token_id, logprob in top:
            out.setdefault(self._piece(token_id), logprob)
        return out

    def _completion_logprobs(
        self,
        prompt: list[int],
        prompt_logprobs: list[tuple[float | None, TopLogprobs | None]] | None,
        tokens: list[Token],
        offset: int,
    ) -> dict[str, Any]:
        """The completions API's `logprobs`: tokens, token_logprobs, top_logprobs, text_offset; with echo
        the prompt's tokens first (the first has no log-probability)."""
        pieces, values, tops, offsets = [], [], [], []
        pairs: list[tuple[int, float | None, TopLogprobs | None]] = []
        for token_id, (value, top) in zip(prompt, prompt_logprobs or [], strict=False):
            pairs.append((token_id, value, top))
        pairs += [(t.token_id, t.logprob, t.top) for t in tokens]
        for token_id, value, top in pairs:
            piece = self._piece(token_id)
            pieces.append(piece)
            values.append(value)
            tops.append(self._top(top))
            offsets.append(offset)
            offset += len(piece)
        return {"tokens": pieces, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}

    def _chat_logprob(self, token: Token) -> dict[str, Any]:
        piece = self._piece(token.token_id)
        top = [
            {"token": (p := self._piece(i)), "logprob": v, "bytes": list(p.encode("utf-8"))}
            for i, v in token.top or []
        ]
        return {
            "token": piece,
            "logprob": token.logprob,
            "bytes": list(piece.encode("utf-8")),
            "top_logprobs": top,
        }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _engine_error(error: BaseException) -> ApiError:
    from olmo_cli.serve.engine import Cancelled

    if isinstance(error, QueueFull | Cancelled):
        return ApiError(
            503, f"the request was not completed: {error}", kind="server_error", code="unavailable"
        )
    return ApiError(500, f"generation failed: {type(error).__name__}: {error}", kind="server_error")
