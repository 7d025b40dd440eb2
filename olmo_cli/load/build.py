"""A read checkpoint turned into what commands compute with: the model on a device, and its tokenizer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from olmo_cli.checkpoint.kind import Located
from olmo_cli.checkpoint.weights import CheckpointWeights
from olmo_cli.errors import CheckpointError

if TYPE_CHECKING:
    from olmo_cli.data.tokenizer import ResolvedTokenizer
    from olmo_cli.model.olmo import OLMo

__all__ = ["load_model", "load_tokenizer", "require_full_precision"]


def load_tokenizer(checkpoint: CheckpointWeights) -> ResolvedTokenizer:
    """The checkpoint's tokenizer with the model config's EOS and pad ids."""
    from olmo_cli.data.tokenizer import resolve_tokenizer

    cfg = checkpoint.config.model
    if checkpoint.kind == "hf" and checkpoint.tokenizer_file is None:
        raise CheckpointError(
            f"{checkpoint.path} has no tokenizer.json",
            hint="copy the model's tokenizer.json into the directory (fast tokenizers save one)",
        )
    source = checkpoint.tokenizer_file or checkpoint.config.tokenizer.identifier
    tokenizer = resolve_tokenizer(str(source), eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    if tokenizer.identity.vocab_size > cfg.padded_vocab_size:
        raise CheckpointError(
            f"tokenizer {source} has {tokenizer.identity.vocab_size} tokens, more than the model's "
            f"{cfg.padded_vocab_size} embeddings",
            hint="the config's tokenizer.identifier does not name the tokenizer this model was trained with",
        )
    return tokenizer


def load_model(
    checkpoint: CheckpointWeights, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> OLMo:
    """An eval-mode OLMo holding the checkpoint's weights, on `device` in `dtype`.

    For a quantized checkpoint the Linear modules (and the embedding, if quantized) are
    `olmo_cli.quant.modules` QuantLinear/QuantEmbedding computing with the int8/int4 weights; `dtype` is
    then the dtype of activations and of the tensors kept in full precision.
    """
    from olmo_cli.model.olmo import build_model

    if checkpoint.quantization is not None:
        from olmo_cli.quant.model import build_quantized_model

        return build_quantized_model(
            checkpoint.config.model,
            checkpoint.state,
            checkpoint.quantization,
            device=device,
            dtype=dtype,
            source=str(checkpoint.path),
        )
    model = build_model(checkpoint.config.model, device="meta")
    model.load_state_dict(checkpoint.state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def require_full_precision(checkpoint: CheckpointWeights, action: str) -> None:
    """Raises CheckpointError when `checkpoint` is quantized; `action` names what needs full precision
    (e.g. "olmo convert-hf")."""
    from olmo_cli.load.read import refuse_kinds

    refuse_kinds(
        Located(checkpoint.path, checkpoint.kind), action, allowed=("unsharded", "sharded", "hf", "adapter")
    )
