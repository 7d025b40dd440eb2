"""Continuous batching: one thread owns the model and runs every request in flight together.

Requests wait in a bounded queue. Between decode steps the engine admits waiting ones while a slot is
free and the tokens in flight (each request's prompt plus its `max_tokens`) stay within the bound,
prefills them into their slots (`slots.SlotCache`; prompts of one length together, as rows of one
forward), and then decodes all active slots in one forward per token. A request that finishes (EOS, a
stop string, its token budget) or is cancelled (its client went away) leaves at once and frees its slot
for the next. Each request learns what happens through `on_event`, called from the engine thread:
`Token` (its text delta, token id and log-probabilities), then one `Finished`, or `Failed`.

Greedy output equals `olmo generate`'s: a prompt is prefilled as `generate_ids` runs one prompt (rows of
one length need no padding and no mask), and a decode step where every row sees all its positions uses
no mask, as `generate_ids` does.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from olmo_cli.model import packed_linear
from olmo_cli.model.generate import FinishReason, GenerationSettings, TextStream, choose_next
from olmo_cli.model.olmo import OLMo
from olmo_cli.serve.slots import SlotCache

__all__ = [
    "Cancelled",
    "Engine",
    "EngineRequest",
    "Failed",
    "Finished",
    "QueueFull",
    "Token",
    "TopLogprobs",
]

TopLogprobs = list[tuple[int, float]]  # (token id, log-probability), most likely first


@dataclass(frozen=True)
class Token:
    token_id: int
    text: str  # the text this token made final (may be empty: held back, or half a character)
    logprob: float | None  # of the chosen token under the model (None unless asked for)
    top: TopLogprobs | None


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    text: str  # the whole completion (stop string left out)
    token_ids: list[int]
    prompt_logprobs: list[tuple[float | None, TopLogprobs | None]] | None  # echo: per prompt token


@dataclass(frozen=True)
class Failed:
    error: BaseException


Event = Token | Finished | Failed


class Cancelled(Exception):
    """The request was cancelled (its client went away, or the server stopped) before it finished."""


class QueueFull(Exception):
    """The engine has as many requests waiting as it accepts; the client should retry later."""


@dataclass
class EngineRequest:
    prompt: list[int]
    settings: GenerationSettings
    on_event: Callable[[Event], None]
    decode: Callable[[list[int]], str]
    stop: Sequence[str] = ()
    logprobs: int | None = None  # top-N per generated token (0: the chosen token's only); None: none
    prompt_logprobs: bool = False  # echo: the log-probability of each prompt token after its prefix
    score_only: bool = False  # no token is generated (max_tokens 0: the prompt is only scored)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def tokens_needed(self) -> int:
        return len(self.prompt) + (0 if self.score_only else self.settings.max_new_tokens)


@dataclass
class _Active:
    request: EngineRequest
    slot: int
    stream: TextStream
    generator: torch.Generator | None
    prompt_logprobs: list[tuple[float | None, TopLogprobs | None]] | None = None
    next_token: int = -1
    generated: int = 0


class Engine:
    """Runs requests on `model` with at most `max_batch` in flight and `max_tokens_in_flight` tokens
    (prompts plus budgets) among them; at most `max_queue` wait. `start()` launches the thread."""

    def __init__(
        self,
        model: OLMo,
        *,
        max_batch: int,
        max_tokens_in_flight: int,
        max_queue: int,
        context: int,
    ) -> None:
        self.model = packed_linear.enable(model)  # the decode step's small matmuls (model/packed_linear.py)
        self.max_batch = max_batch
        self.max_tokens_in_flight = max_tokens_in_flight
        self.max_queue = max_queue
        self.context = context
        self.cache = SlotCache(model, max_batch, context)
        self._waiting: collections.deque[EngineRequest] = collections.deque()
        self._active: dict[int, _Active] = {}
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode forwards run (for tests and the benchmark)
        self.largest_batch = 0
        self.largest_prefill = 0  # most prompts prefilled in one forward

    # ---- the client side (any thread) ------------------------------------------------------------------

    def submit(self, request: EngineRequest) -> None:
        """Queues `request`; raises QueueFull when `max_queue` wait already, ValueError when it can never
        run (longer than the context or the tokens-in-flight bound)."""
        if request.tokens_needed > self.context:
            asked = 0 if request.score_only else request.settings.max_new_tokens
            raise ValueError(
                f"{len(request.prompt)} prompt tokens + {asked} to generate exceed the model's context of "
                f"{self.context} tokens"
            )
        if request.tokens_needed > self.max_tokens_in_flight:
            raise ValueError(
                f"{request.tokens_needed} tokens (prompt + max_tokens) exceed this server's "
                f"--max-tokens-in-flight of {self.max_tokens_in_flight}"
            )
        with self._wake:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            free_slots = max(self.max_batch - len(self._active), 0)  # taken at the next step, not waiting
            if len(self._waiting) >= self.max_queue + free_slots:
                raise QueueFull(f"{self.max_batch} requests are running and {len(self._waiting)} waiting")
            self._waiting.append(request)
            self._wake.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="olmo-serve-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stops taking requests, cancels those waiting, lets those running finish for up to `timeout`
        seconds, then cancels the rest."""
        with self._wake:
            self._stopping = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._wake.notify()
        for request in waiting:
            request.on_event(Failed(QueueFull("the server is shutting down")))
        deadline = time.monotonic() + timeout
        while self._active and time.monotonic() < deadline:
            time.sleep(0.05)
        for active in list(self._active.values()):
            active.request.cancel()
        with self._wake:
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def in_flight(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # ---- the engine thread -------------------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._waiting and not self._active and not self._stopping:
                        self._wake.wait()
                    if self._stopping and not self._active:
                        return
                self.tick()

    def tick(self) -> None:
        """One round: admit and prefill what fits, drop the cancelled, one decode step for the rest. The
        engine thread runs it in a loop; a test may call it itself (under torch.inference_mode)."""
        with self._wake:
            admitted = self._admit()
        # Prompts of one length are prefilled together, in one forward (no padding, so no mask: each row
        # is computed as it would be alone).
        groups: dict[int, list[tuple[EngineRequest, int]]] = {}
        for request, slot in admitted:
            groups.setdefault(len(request.prompt), []).append((request, slot))
        for group in groups.values():
            self._prefill(group)
        self._drop_cancelled()
        if self._active:
            self._decode_step()

    def _admit(self) -> list[tuple[EngineRequest, int]]:
        """Waiting requests that fit now (in order: one that does not fit holds the queue), with slots."""
        free = [s for s in range(self.max_batch) if s not in self._active]
        budget = self.max_tokens_in_flight - sum(a.request.tokens_needed for a in self._active.values())
        admitted = []
        while self._waiting and free:
            request = self._waiting[0]
            if request.cancelled.is_set():
                self._waiting.popleft()
                continue
            if request.tokens_needed > budget:
                break
            self._waiting.popleft()
            slot = free.pop(0)
            budget -= request.tokens_needed
            admitted.append((request, slot))
        return admitted

    def _run_guarded(self, request: EngineRequest, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as e:  # noqa: BLE001 - the request fails, the server goes on
            self._active = {s: a for s, a in self._active.items() if a.request is not request}
            request.on_event(Failed(e))

    def _prefill(self, group: list[tuple[EngineRequest, int]]) -> None:
        """Prefills requests whose prompts have one length, each into its slot, and picks their first
        tokens. A failed forward fails each of them (the server goes on)."""
        requests = [request for request, _ in group]
        self.largest_prefill = max(self.largest_prefill, len(group))
        ids = torch.tensor([r.prompt for r in requests], device=self.cache.device)
        positions = self.cache.prefill([slot for _, slot in group], ids.shape[1])
        try:
            logits = self.model(ids, positions, self.cache)  # [g, T, V]
        except Exception as e:  # noqa: BLE001
            for request in requests:
                request.on_event(Failed(e))
            return
        for i, (request, slot) in enumerate(group):
            self._run_guarded(request, lambda r=request, s=slot, row=logits[i]: self._start(r, s, row))

    def _start(self, request: EngineRequest, slot: int, logits: torch.Tensor) -> None:
        """A request prefilled into `slot` (`logits` [T, V] its prompt's) becomes active."""
        prompt_logprobs = None
        if request.prompt_logprobs:
            prompt_logprobs = _prompt_logprobs(logits, request.prompt, request.logprobs)
        generator = None
        if request.settings.temperature > 0 and request.settings.seed is not None:
            generator = torch.Generator(device=self.cache.device)
            generator.manual_seed(request.settings.seed)
        active = _Active(request, slot, TextStream(request.decode, request.stop), generator, prompt_logprobs)
        self._active[slot] = active
        if request.score_only:
            self._finish(active, "length")
        else:
            self._advance(active, logits[-1])

    def _decode_step(self) -> None:
        rows = sorted(self._active)
        ids = torch.tensor([[self._active[r].next_token] for r in rows], device=self.cache.device)
        positions = self.cache.decode(rows)
        try:
            logits = self.model(ids, positions, self.cache)[:, -1]  # [b, V]
        except Exception as e:  # noqa: BLE001 - every request of the step fails, the server goes on
            for r in rows:
                self._active.pop(r).request.on_event(Failed(e))
            return
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len(rows))
        greedy = logits.argmax(dim=-1).tolist()  # one call for every row (choose_next's greedy pick)
        for i, r in enumerate(rows):
            active = self._active[r]
            pick = greedy[i] if active.request.settings.temperature == 0 else None
            self._run_guarded(
                active.request, lambda a=active, row=logits[i], t=pick: self._advance(a, row, t)
            )

    def _advance(self, active: _Active, logits: torch.Tensor, token: int | None = None) -> None:
        """Chooses the next token from one row's logits [V] (unless given: the greedy pick), tells the
        client, and finishes the request when it is done."""
        request = active.request
        settings = request.settings
        if token is None:
            token = int(choose_next(logits[None], settings, active.generator)[0])
        if token == settings.eos_token_id:
            self._finish(active, "eos")
            return
        logprob, top = None, None
        if request.logprobs is not None:
            logprob, top = _token_logprobs(logits, token, request.logprobs)
        active.generated += 1
        text = active.stream.push(token)
        request.on_event(Token(token, text, logprob, top))
        if active.stream.stopped:
            self._finish(active, "stop")
        elif active.generated >= settings.max_new_tokens:
            self._finish(active, "length")
        else:
            active.next_token = token

    def _finish(self, active: _Active, reason: FinishReason) -> None:
        rest = active.stream.finish()
        request = active.request
        if rest:
            request.on_event(Token(-1, rest, None, None))
        self._active.pop(active.slot, None)
        request.on_event(
            Finished(reason, active.stream.text, list(active.stream.ids), active.prompt_logprobs)
        )

    def _drop_cancelled(self) -> None:
        for slot, active in list(self._active.items()):
            if active.request.cancelled.is_set():
                del self._active[slot]
                active.request.on_event(Failed(Cancelled("the request was cancelled")))


def _token_logprobs(logits: torch.Tensor, token: int, top_n: int) -> tuple[float, TopLogprobs | None]:
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = None
    if top_n > 0:
        values, ids = torch.topk(logp, top_n)
        top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return float(logp[token]), top


def _prompt_logprobs(
    logits: torch.Tensor, prompt: list[int], top_n: int | None
) -> list[tuple[float | None, TopLogprobs | None]]:
    """log P(prompt[i] | prompt[:i]) for every prompt token (None for the first, which has no prefix)."""
    logp = torch.log_softmax(logits[:-1].float(), dim=-1)  # row i predicts token i + 1
    chosen = logp.gather(-1, torch.tensor(prompt[1:], device=logp.device)[:, None])[:, 0].tolist()
    tops: list[TopLogprobs | None] = [None] * len(chosen)
    if top_n:
        values, ids = torch.topk(logp, top_n, dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    return [(None, None), *zip(chosen, tops, strict=True)]
