"""Log-likelihoods of continuations: requests -> packed, batched forward passes -> one number each.

What makes it fast without changing a score:
- A context is read once for all its continuations. Requests with the same context tokens share one
  row: the context, then each continuation's input tokens as a separate segment. An attention mask lets
  a segment see the context and its own earlier tokens only, and each segment's positions continue from
  the context's end, so every scored logit is the one the request alone would get (olmo.py's
  `AttentionCache` protocol carries the mask into attention). One-token continuations (" yes"/" no")
  add nothing to the row at all.
- Rows are sorted by length (longest first) and right-padded, so padding stays small and never reaches
  a scored position.
- The output projection (d_model x vocab: most of a small model's cost) and the log-softmax run only at
  the scored positions.
Nothing here prints; progress goes to a callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from olmo_cli.eval.requests import Request

__all__ = ["Row", "Scores", "final_hidden", "plan_rows", "project", "score_requests"]

_PROJECT_ELEMENTS = 1 << 25  # logits computed at once (positions x vocab): 128 MiB in fp32
_MIN_FILL = 0.75  # a row shorter than this fraction of its batch's first row starts a new batch


@dataclass
class Scores:
    loglikelihood: np.ndarray  # [n] float64: summed log-probability of each continuation
    greedy: np.ndarray  # [n] bool: every continuation token was the argmax


@dataclass
class Row:
    """One model input: a context, then one segment per continuation (segment 0 is the context)."""

    tokens: list[int]
    positions: list[int]
    segments: list[int]
    reads: list[tuple[int, list[int], list[int]]] = field(default_factory=list)  # (request, at, targets)

    @property
    def packed(self) -> bool:
        """More than one continuation segment: plain causal attention would let them see each other."""
        return len(set(self.segments) - {0}) > 1


class _TreeMask:
    """The attention-mask side of olmo.py's `AttentionCache`: keys and values pass through unchanged and
    every layer gets the same packed-row mask (True = may attend)."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        return k, v, self.mask, False


class _HiddenReady(Exception):
    """Raised by the hook on the final norm to skip computing logits for every position."""


def _has_final_norm(model: nn.Module) -> bool:
    blocks = getattr(model, "transformer", None)
    return isinstance(blocks, nn.ModuleDict) and "ln_f" in blocks


def final_hidden(model: nn.Module, input_ids: torch.Tensor, **forward_kwargs: Any) -> torch.Tensor:
    """The model's hidden states after its final layer norm: [b, T, d_model].

    Runs the model's own forward and stops it right after `transformer.ln_f`, so the blocks run exactly
    as in `forward`; only the output projection is left to `project`. Not for FSDP-wrapped models
    (their root post-forward hook would not run).
    """
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        captured.append(output)
        raise _HiddenReady

    handle = model.transformer["ln_f"].register_forward_hook(hook)  # type: ignore[index, union-attr]
    try:
        model(input_ids, **forward_kwargs)
    except _HiddenReady:
        pass
    finally:
        handle.remove()
    return captured[0]


def project(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits for hidden states [..., d_model], as the model's forward computes them after ln_f."""
    cfg = model.config  # type: ignore[union-attr]
    blocks = model.transformer  # type: ignore[union-attr]
    logits = F.linear(hidden, blocks["wte"].weight) if cfg.weight_tying else blocks["ff_out"](hidden)
    return logits * (1 / math.sqrt(cfg.d_model)) if cfg.scale_logits else logits


def plan_rows(requests: Sequence[Request]) -> list[Row]:
    """Rows covering every request with a continuation; requests with equal context tokens share one."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, request in enumerate(requests):
        if request.n_cont > 0:  # an empty continuation scores 0 without a forward pass
            by_context.setdefault(request.tokens[: len(request.tokens) - request.n_cont], []).append(i)
    rows = []
    for context, members in by_context.items():
        row = Row(list(context), list(range(len(context))), [0] * len(context))
        inputs: dict[tuple[int, ...], list[int]] = {}  # equal continuations read the same segment
        for i in members:
            cont = requests[i].tokens[-requests[i].n_cont :]
            if cont[:-1] not in inputs:
                start = len(row.tokens)
                segment = max(row.segments) + 1
                row.tokens += cont[:-1]
                row.positions += range(len(context), len(context) + len(cont) - 1)
                row.segments += [segment] * (len(cont) - 1)
                inputs[cont[:-1]] = list(range(start, start + len(cont) - 1))
            # The first continuation token is predicted from the context's last position.
            row.reads.append((i, [len(context) - 1, *inputs[cont[:-1]]], list(cont)))
        rows.append(row)
    return rows


def _batches(rows: list[Row], batch_size: int) -> list[list[Row]]:
    """Longest rows first, at most `batch_size` per batch; a batch also ends where rows get much shorter
    than its first (right padding to the first row's width would cost more than another forward)."""
    batches: list[list[Row]] = []
    for row in sorted(rows, key=lambda r: -len(r.tokens)):  # stable: equal lengths keep their order
        batch = batches[-1] if batches else None
        if batch is None or len(batch) == batch_size or len(row.tokens) < _MIN_FILL * len(batch[0].tokens):
            batches.append([row])
        else:
            batch.append(row)
    return batches


@torch.no_grad()
def score_requests(
    model: nn.Module,
    requests: Sequence[Request],
    *,
    batch_size: int,
    pad_token_id: int,
    autocast_dtype: torch.dtype | None = None,
    full_logits: bool = False,
    progress: Callable[[int], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    all_reduce: Callable[[torch.Tensor], None] | None = None,
) -> Scores:
    """Scores every request. With `world_size` > 1 each rank runs every world_size-th batch (all ranks
    run the same number of forward passes, as FSDP needs) and `all_reduce` (a sum) gathers the results.

    `full_logits`: take logits from `model(...)` instead of stopping at the final norm (FSDP-wrapped or
    foreign models). `progress(n)` is told how many more requests are done.
    """
    device = next(model.parameters()).device
    batches = _batches(plan_rows(requests), batch_size)
    results = torch.zeros(len(requests), 2, dtype=torch.float64, device=device)  # (LL, misses)
    hidden_path = not full_logits and _has_final_norm(model)
    autocast: Any = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    )
    for round_ in range(math.ceil(len(batches) / world_size)):
        index = round_ * world_size + rank
        keep = index < len(batches)
        batch = batches[index] if keep else batches[0]  # a spare pass keeps the ranks in step
        with autocast:
            _score_batch(model, batch, results if keep else None, pad_token_id, hidden_path, device)
        if progress is not None and keep:
            progress(sum(len(row.reads) for row in batch))
    if world_size > 1:
        if all_reduce is not None:
            all_reduce(results)
        else:
            import torch.distributed as dist

            dist.all_reduce(results, op=dist.ReduceOp.SUM)
    out = results.cpu().numpy()
    return Scores(out[:, 0].copy(), out[:, 1] == 0)


def _inputs(batch: list[Row], pad_token_id: int, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """Right-padded ids, and the forward arguments for packed rows (positions and the mask)."""
    width = max(len(row.tokens) for row in batch)
    ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    for b, row in enumerate(batch):
        ids[b, : len(row.tokens)] = torch.tensor(row.tokens, dtype=torch.long)
    if not any(row.packed for row in batch):
        return ids.to(device), {}
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    segments = torch.full((len(batch), width), -1, dtype=torch.long)  # -1: padding
    for b, row in enumerate(batch):
        positions[b, : len(row.tokens)] = torch.tensor(row.positions, dtype=torch.long)
        segments[b, : len(row.tokens)] = torch.tensor(row.segments, dtype=torch.long)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    # A query sees earlier keys of the context (segment 0) and of its own segment; padding queries see
    # the context (never an empty row, whose softmax would be NaN), and no real query sees padding.
    mask = causal & ((seg_k == 0) | (seg_k == seg_q))
    return ids.to(device), {"positions": positions.to(device), "cache": _TreeMask(mask[:, None].to(device))}


def _score_batch(
    model: nn.Module,
    batch: list[Row],
    results: torch.Tensor | None,
    pad_token_id: int,
    hidden_path: bool,
    device: torch.device,
) -> None:
    ids, forward_kwargs = _inputs(batch, pad_token_id, device)
    owners, batch_rows, positions, targets = [], [], [], []
    for b, row in enumerate(batch):
        for request, at, cont in row.reads:
            owners += [request] * len(cont)
            batch_rows += [b] * len(cont)
            positions += at
            targets += cont
    sel_rows = torch.tensor(batch_rows, device=device)
    sel_pos = torch.tensor(positions, device=device)
    target = torch.tensor(targets, device=device)
    if hidden_path:
        hidden = final_hidden(model, ids, **forward_kwargs)[sel_rows, sel_pos]
        step = max(1, _PROJECT_ELEMENTS // model.config.padded_vocab_size)  # type: ignore[union-attr]
    else:
        logits_all = model(ids, **forward_kwargs)
        step = len(targets)
    token_lp = torch.empty(len(targets), dtype=torch.float64, device=device)
    token_hit = torch.empty(len(targets), dtype=torch.bool, device=device)
    for start in range(0, len(targets), step):
        part = slice(start, start + step)
        logits = project(model, hidden[part]) if hidden_path else logits_all[sel_rows[part], sel_pos[part]]
        logits = logits.float()
        token_lp[part] = torch.log_softmax(logits, dim=-1).gather(-1, target[part, None]).squeeze(-1).double()
        token_hit[part] = logits.argmax(dim=-1) == target[part]
    if results is not None:
        owner = torch.tensor(owners, device=device)
        results[:, 0].index_add_(0, owner, token_lp)
        results[:, 1].index_add_(0, owner, (~token_hit).double())
