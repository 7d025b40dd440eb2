"""`olmo eval --perplexity` numbers against an independent computation: cross-entropy from plain forward
passes over the same windows, perplexity = exp(mean cross-entropy), bytes from decoding each token."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from olmo_cli.errors import DataError, UsageError
from olmo_cli.eval.perplexity_sources import (
    evaluate_source,
    open_source,
    predicted_tokens,
    token_byte_lengths,
)
from tests._fixtures import tiny_model
from tests.eval._helpers import builtin_tokenizer

SEQ = 16
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Perplexity is the exponential of the mean cross-entropy.",
    "A third, longer document: it spans more than one window of sixteen tokens for sure.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return builtin_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab=4096, seed=5, init_std=0.3)


def _stream(tokenizer) -> np.ndarray:
    return np.concatenate([tokenizer.encode(t) for t in TEXTS]).astype(np.int64)  # each text + EOS


def _reference(model, stream: np.ndarray, max_tokens: int | None = None) -> tuple[float, int, list[int]]:
    """(summed NLL, predicted tokens, predicted ids) over consecutive windows of SEQ tokens."""
    nll, count, ids = 0.0, 0, []
    for start in range(0, len(stream), SEQ):
        window = torch.from_numpy(stream[start : start + SEQ])
        if len(window) < 2:
            break
        with torch.no_grad():
            logits = model(window[None, :-1])[0].double()
        losses = F.cross_entropy(logits, window[1:], reduction="none")
        if max_tokens is not None:
            losses = losses[: max_tokens - count]
        nll += losses.sum().item()
        ids += window[1 : 1 + len(losses)].tolist()
        count += len(losses)
        if max_tokens is not None and count >= max_tokens:
            break
    return nll, count, ids


def test_token_file_matches_exp_of_mean_cross_entropy(tmp_path, model, tokenizer):
    stream = _stream(tokenizer)
    path = tmp_path / "val.npy"
    stream.astype("<u2").tofile(path)
    source = open_source(str(path), tokenizer, "uint16")
    assert source.label == "val" and source.kind == "tokens"
    lengths = token_byte_lengths(tokenizer, 4096)
    result = evaluate_source(model, source, lengths, seq_len=SEQ, batch_size=2)
    nll, count, _ = _reference(model, stream)
    assert result.tokens == count == len(stream) - math.ceil(len(stream) / SEQ)  # first of each window
    assert predicted_tokens(source, SEQ, None) == count and predicted_tokens(source, SEQ, 7) == 7
    assert result.cross_entropy == pytest.approx(nll / count, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_max_tokens_caps_the_predicted_tokens(tmp_path, model, tokenizer):
    stream = _stream(tokenizer)
    path = tmp_path / "val.npy"
    stream.astype("<u2").tofile(path)
    result = evaluate_source(
        model,
        open_source(str(path), tokenizer, "uint16"),
        token_byte_lengths(tokenizer, 4096),
        seq_len=SEQ,
        batch_size=3,
        max_tokens=20,
    )
    nll, count, _ = _reference(model, stream, max_tokens=20)
    assert result.tokens == count == 20
    assert result.nll == pytest.approx(nll, rel=1e-5)


def test_raw_text_equals_its_token_file_and_bits_per_byte(tmp_path, model, tokenizer):
    raw = tmp_path / "docs.jsonl"
    raw.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    tokens = tmp_path / "docs-tok.npy"
    _stream(tokenizer).astype("<u2").tofile(tokens)
    lengths = token_byte_lengths(tokenizer, 4096)
    from_text = evaluate_source(
        model, open_source(f"web={raw}", tokenizer, "uint16"), lengths, seq_len=SEQ, batch_size=4
    )
    from_tokens = evaluate_source(
        model, open_source(str(tokens), tokenizer, "uint16"), lengths, seq_len=SEQ, batch_size=4
    )
    assert from_text.label == "web"
    assert (from_text.tokens, from_text.bytes) == (from_tokens.tokens, from_tokens.bytes)
    assert from_text.nll == pytest.approx(from_tokens.nll, rel=1e-6)
    # Bytes independently: each predicted token decoded on its own (exact for ASCII), EOS counts 0.
    _, _, ids = _reference(model, _stream(tokenizer))
    expected_bytes = sum(len(tokenizer.decode([i]).encode("utf-8")) for i in ids if i != 0)
    assert from_text.bytes == expected_bytes
    assert from_text.bits_per_byte == pytest.approx(from_text.nll / math.log(2) / expected_bytes)


def test_text_file_is_one_document(tmp_path, tokenizer):
    path = tmp_path / "book.txt"
    path.write_text(TEXTS[0] + "\n" + TEXTS[1])
    source = open_source(str(path), tokenizer, "uint16")
    assert source.label == "book"
    assert source.streams[0].tolist() == tokenizer.encode(TEXTS[0] + "\n" + TEXTS[1])


def test_token_ids_beyond_the_model_are_a_data_error(tmp_path, tokenizer):
    path = tmp_path / "big.npy"
    np.array([5, 60000, 7], dtype="<u2").tofile(path)
    with pytest.raises(DataError, match="token id 60000 is outside the model's 4096 embeddings"):
        evaluate_source(
            tiny_model(vocab=4096, init_std=0.3),
            open_source(str(path), tokenizer, "uint16"),
            np.zeros(4096, dtype=np.int64),
            seq_len=SEQ,
            batch_size=1,
        )


def test_remote_and_missing_data(tmp_path, tokenizer):
    with pytest.raises(UsageError, match="reads local data"):
        open_source("https://example.com/x.npy", tokenizer, "uint16")
    with pytest.raises(DataError):
        open_source(str(tmp_path / "nothing.npy"), tokenizer, "uint16")
