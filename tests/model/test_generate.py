"""KV-cache generation against two independent references: recomputing the whole sequence every step with
our own model (no cache), and transformers' `generate` on the same weights."""

from __future__ import annotations

import pytest
import torch
import transformers  # the dev extra installs it: a missing reference fails, never skips

from olmo_cli.config.schema import ModelConfig
from olmo_cli.convert.hf import hf_config_dict, to_hf_state_dict
from olmo_cli.model.generate import (
    GenerationSettings,
    KVCache,
    TextStream,
    choose_next,
    generate_ids,
    warp_logits,
)
from olmo_cli.model.olmo import OLMo, build_model
from tests._fixtures import model_config

VOCAB = 512
NEW = 24


def config(**overrides: object) -> ModelConfig:
    sizes = dict(d_model=64, max_sequence_length=128, weight_tying=False)
    # A large std spreads the logits: the top two differ by far more than fp32 noise, so argmax
    # comparisons between implementations are not decided by rounding.
    return model_config(VOCAB, **{**sizes, "init_fn": "normal", "init_std": 0.5, **overrides})


PROMPTS = [[5, 17, 300, 42, 9, 77, 12], [250, 3], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]]
MODELS = [
    pytest.param(dict(), id="untied"),
    pytest.param(dict(weight_tying=True, clip_qkv=0.8), id="tied-clip"),
    pytest.param(dict(n_kv_heads=2), id="gqa"),
]


def recompute_greedy(model: OLMo, prompt: list[int], steps: int) -> tuple[list[int], float]:
    """The reference: the full sequence through the model at every step, no cache. Also returns the
    smallest gap between the two best logits seen, to show the comparison is not tie-prone."""
    ids, gap = list(prompt), float("inf")
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids]))[0, -1]
            top = logits.topk(2).values
            gap = min(gap, float(top[0] - top[1]))
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :], gap


@pytest.mark.parametrize("overrides", MODELS)
def test_cached_greedy_equals_recomputing(overrides: dict[str, object]) -> None:
    model = build_model(config(**overrides), seed=3).eval()
    settings = GenerationSettings(max_new_tokens=NEW, pad_token_id=1)
    batched = generate_ids(model, PROMPTS, settings)  # left padding, one batch
    for prompt, got in zip(PROMPTS, batched, strict=True):
        expected, gap = recompute_greedy(model, prompt, NEW)
        assert gap > 1e-3
        assert len(set(expected)) > NEW // 2  # a varied sequence, not one token repeated
        assert got.token_ids == expected
        assert got.finish_reason == "length"
        alone = generate_ids(model, [prompt], settings)[0]
        assert alone.token_ids == expected


def hf_model(model: OLMo) -> transformers.OlmoForCausalLM:
    cfg = model.config
    hf = transformers.OlmoForCausalLM(transformers.OlmoConfig(**hf_config_dict(cfg)))
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), cfg), strict=True)
    return hf.eval()


@pytest.mark.parametrize("overrides", MODELS)
def test_greedy_equals_transformers_generate(overrides: dict[str, object]) -> None:
    model = build_model(config(**overrides), seed=5).eval()
    reference = hf_model(model)
    ours = generate_ids(model, PROMPTS, GenerationSettings(max_new_tokens=NEW, pad_token_id=1))
    for prompt, got in zip(PROMPTS, ours, strict=True):
        out = reference.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=NEW,
            min_new_tokens=NEW,  # never stop early at EOS: compare every position
            pad_token_id=1,
        )
        assert got.token_ids == out[0, len(prompt) :].tolist()


def test_batched_left_padding_equals_transformers() -> None:
    model = build_model(config(), seed=8).eval()
    reference = hf_model(model)
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[1] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    out = reference.generate(
        ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=1
    )
    ours = generate_ids(model, PROMPTS, GenerationSettings(max_new_tokens=NEW, pad_token_id=1))
    assert [g.token_ids for g in ours] == out[:, width:].tolist()


def test_eos_ends_a_row_and_others_continue() -> None:
    model = build_model(config(), seed=3).eval()
    free = generate_ids(model, PROMPTS, GenerationSettings(max_new_tokens=NEW, pad_token_id=1))
    eos = free[0].token_ids[4]  # pretend the 5th token of row 0 is EOS
    first = free[0].token_ids.index(eos)
    stopped = generate_ids(
        model, PROMPTS, GenerationSettings(max_new_tokens=NEW, eos_token_id=eos, pad_token_id=1)
    )
    assert stopped[0].token_ids == free[0].token_ids[:first]
    assert stopped[0].finish_reason == "eos"
    for row in (1, 2):
        if eos not in free[row].token_ids:
            assert stopped[row].token_ids == free[row].token_ids
            assert stopped[row].finish_reason == "length"


def test_on_token_can_stop_a_row() -> None:
    model = build_model(config(), seed=3).eval()
    seen: list[tuple[int, int]] = []

    def on_token(row: int, token: int) -> bool:
        seen.append((row, token))
        return row == 1 and sum(1 for r, _ in seen if r == 1) == 3

    out = generate_ids(
        model, PROMPTS, GenerationSettings(max_new_tokens=8, pad_token_id=1), on_token=on_token
    )
    assert len(out[1].token_ids) == 3 and out[1].finish_reason == "stop"
    assert len(out[0].token_ids) == 8 and out[0].finish_reason == "length"
    assert [t for r, t in seen if r == 0] == out[0].token_ids


def test_sampling_is_seeded_and_respects_top_k() -> None:
    model = build_model(config(), seed=3).eval()
    settings = GenerationSettings(max_new_tokens=16, temperature=1.0, top_k=3, seed=11, pad_token_id=1)
    first = generate_ids(model, PROMPTS, settings)
    again = generate_ids(model, PROMPTS, settings)
    other = generate_ids(model, PROMPTS, GenerationSettings(**{**settings.__dict__, "seed": 12}))
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert [g.token_ids for g in first] != [g.token_ids for g in other]
    greedy = generate_ids(model, PROMPTS, GenerationSettings(max_new_tokens=16, pad_token_id=1))
    assert [g.token_ids for g in first] != [g.token_ids for g in greedy]
    # Every sampled token is among the 3 best at its step.
    for prompt, got in zip(PROMPTS, first, strict=True):
        ids = prompt + got.token_ids
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, len(prompt) - 1 : -1]
        top3 = logits.topk(3).indices
        assert all(token in top3[i].tolist() for i, token in enumerate(got.token_ids))


def test_top_p_and_top_k_filters_match_transformers() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    for top_k, top_p in ((None, 0.7), (5, None), (8, 0.5), (None, 1.0), (1, 0.9)):
        settings = GenerationSettings(temperature=0.7, top_k=top_k, top_p=top_p)
        processors = transformers.LogitsProcessorList([transformers.TemperatureLogitsWarper(0.7)])
        if top_k:
            processors.append(transformers.TopKLogitsWarper(top_k))
        if top_p:
            processors.append(transformers.TopPLogitsWarper(top_p))
        theirs = processors(torch.zeros(4, 1, dtype=torch.long), logits.clone())
        ours = warp_logits(logits, settings)
        assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
        assert torch.allclose(ours[torch.isfinite(ours)], theirs[torch.isfinite(theirs)])
        draws = torch.stack(
            [choose_next(logits, settings, torch.Generator().manual_seed(s)) for s in range(200)]
        )
        assert torch.isfinite(ours.gather(1, draws.T)).all()  # only allowed tokens are drawn


def test_cache_mask_with_padding_lets_pad_queries_see_themselves() -> None:
    valid = torch.tensor([[False, False, True, True, True], [True, True, True, True, True]])
    cache = KVCache(1, 2, 1, 2, 5, dtype=torch.float32, device="cpu", key_valid=valid)
    k = torch.zeros(2, 1, 3, 2)
    _, _, mask, causal = cache.update(0, k, k)
    assert not causal and mask is not None and mask.shape == (2, 1, 3, 3)
    assert mask[0, 0].tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    assert mask[1, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    _, _, mask, _ = cache.update(0, k[:, :, :1], k[:, :, :1])
    assert mask[0, 0].tolist() == [[False, False, True, True]]


def test_text_stream_holds_back_partial_stop_strings_and_split_characters() -> None:
    pieces = {1: "Hel", 2: "lo", 3: " EN", 4: "D", 5: " wor", 6: "\xe9"}

    def decode(ids: list[int]) -> str:
        text = "".join(pieces[i] for i in ids)
        return text[:-1] + "\ufffd" if ids and ids[-1] == 6 and len(ids) % 2 else text

    stream = TextStream(decode, stop_strings=["END"])
    assert [stream.push(t) for t in (1, 2, 3)] == ["Hel", "lo", " "]  # "EN" may begin "END"
    assert stream.push(4) == "" and stream.stopped and stream.text == "Hello "
    stream = TextStream(decode, stop_strings=["END"])
    deltas = [stream.push(t) for t in (1, 2, 3, 5)]
    assert "".join(deltas) == "Hello EN wor" and not stream.stopped
    stream = TextStream(decode)
    assert stream.push(6) == ""  # half a character: wait
    assert stream.finish() == "\ufffd"


def test_bf16_generation_runs_and_mostly_agrees() -> None:
    model = build_model(config(), seed=3).eval()
    fp32 = generate_ids(model, PROMPTS[:1], GenerationSettings(max_new_tokens=8, pad_token_id=1))
    bf16 = generate_ids(
        model.to(torch.bfloat16), PROMPTS[:1], GenerationSettings(max_new_tokens=8, pad_token_id=1)
    )
    assert len(bf16[0].token_ids) == 8
    assert bf16[0].token_ids[:2] == fp32[0].token_ids[:2]
