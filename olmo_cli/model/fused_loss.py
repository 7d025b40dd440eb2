"""Cross-entropy (and the z-loss's log-sum-exp) of low-precision logits, in fp32, a block of rows at a time.

The plain way, `F.cross_entropy(logits.float(), ...)`, makes an fp32 copy of the whole [N, V] logits, an
fp32 log-softmax kept for backward, and in backward a zero-filled fp32 gradient, the log-softmax
gradient and its cast back: the largest tensors of a training step, passed over six or more times.
Here each block of rows is upcast and reduced while it sits in cache; backward recomputes the softmax
from the saved (low-precision) logits and the per-row log-sum-exp and writes the gradient once, in the
logits' dtype. Same formulas, fp32 throughout: results agree with the plain way to rounding.
"""

from __future__ import annotations

import torch

__all__ = ["fused_cross_entropy"]

_BLOCK_ELEMENTS = 1 << 22  # 4M logits (16 MB in fp32) per block: few, large kernels; one reused buffer


def _blocks(logits: torch.Tensor, rows: int):
    """(rows slice, fp32 view of one reused buffer) per block: one allocation, no page faults per block."""
    buffer = torch.empty(
        (min(rows, logits.shape[0]), logits.shape[1]), dtype=torch.float32, device=logits.device
    )
    for start in range(0, logits.shape[0], rows):
        end = min(start + rows, logits.shape[0])
        block = buffer[: end - start]
        block.copy_(logits[start:end])
        yield slice(start, end), block


class _FusedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int):  # type: ignore[override]
        valid = labels != ignore_index
        safe = labels.masked_fill(~valid, 0)
        rows = max(1, _BLOCK_ELEMENTS // logits.shape[-1])
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for span, block in _blocks(logits, rows):
            # log-sum-exp in place, as torch.logsumexp computes it (an infinite max is shifted by 0).
            top = block.amax(dim=-1, keepdim=True)
            top.masked_fill_(top.isinf(), 0.0)
            torch.sum(block.sub_(top).exp_(), dim=-1, out=lse[span])
            lse[span] = lse[span].log_() + top.squeeze(-1)
        picked = logits.gather(1, safe[:, None]).squeeze(1).float()
        weight = valid.float()
        ce_sum = ((lse - picked) * weight).sum()
        lse_sq_sum = (lse.square() * weight).sum()
        ctx.save_for_backward(logits, safe, weight, lse)
        ctx.rows = rows
        return ce_sum, lse_sq_sum

    @staticmethod
    def backward(ctx, grad_ce: torch.Tensor, grad_lse_sq: torch.Tensor):  # type: ignore[override]
        logits, safe, weight, lse = ctx.saved_tensors
        # d(ce_sum)/dx = w (softmax - onehot); d(lse_sq_sum)/dx = 2 w lse softmax.
        scale = weight * grad_ce + 2 * weight * grad_lse_sq * lse
        target = (-(weight * grad_ce))[:, None]
        grad = torch.empty_like(logits)
        for span, block in _blocks(logits, ctx.rows):
            block.sub_(lse[span, None]).exp_().mul_(scale[span, None])
            block.scatter_add_(1, safe[span, None], target[span])
            grad[span].copy_(block)
        return grad, None, None


def fused_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token cross-entropies, sum of squared log-sum-exps) over the rows of logits [N, V] whose
    label [N] is not `ignore_index`; both fp32 0-dim tensors, differentiable with respect to logits."""
    return _FusedCrossEntropy.apply(logits, labels, ignore_index)
