"""The batching engine on its own (olmo_cli/serve/engine.py), driven step by step: requests joining and
leaving at every step, in every slot, give exactly what each gives alone with `olmo generate`'s engine,
whatever an earlier request left in the cache; the bounds hold."""

from __future__ import annotations

import random

import pytest
import torch

from olmo_cli.data.prompts import chat_prompt_ids
from olmo_cli.serve.engine import Engine, EngineRequest, Failed, Finished, QueueFull
from tests.api._helpers import EXCHANGES, trained_chat_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import olmo_cli

    return olmo_cli.load(trained_chat_checkpoint(tmp_path_factory.mktemp("engine-model")))


def _engine(model, **limits) -> Engine:
    context = model.max_sequence_length
    settings = {"max_batch": 4, "max_tokens_in_flight": 4 * context, "max_queue": 64, "context": context}
    return Engine(model.torch_module, **(settings | limits))


def test_requests_joining_and_leaving_get_what_they_get_alone(model):
    tok = model.tokenizer.resolved
    prompts = [chat_prompt_ids([("user", q)], tok) for q, _ in EXCHANGES]
    alone = {
        tuple(p): model.complete([p], model.settings(max_new_tokens=24), batch_size=1)[0] for p in prompts
    }
    assert [alone[tuple(p)].text for p in prompts] == [a for _, a in EXCHANGES]
    engine = _engine(model)
    # A fresh cache holds zeros, not leftover memory (NaN there would poison rows it is masked for).
    assert torch.isfinite(engine.cache.keys).all() and torch.isfinite(engine.cache.values).all()
    # Entries of earlier requests stay in the slots; masked, they must not matter (large, finite values).
    torch.manual_seed(0)
    engine.cache.keys.normal_(0, 100)
    engine.cache.values.normal_(0, 100)
    rng = random.Random(0)
    results: list[tuple[list[int], list[int]]] = []
    submitted, total = 0, 40

    def submit() -> None:
        prompt, budget = rng.choice(prompts), rng.randint(1, 12)

        def on_event(event, prompt=prompt, budget=budget) -> None:
            assert not isinstance(event, Failed), event
            if isinstance(event, Finished):
                results.append((event.token_ids, alone[tuple(prompt)].token_ids[:budget]))

        engine.submit(EngineRequest(prompt, model.settings(max_new_tokens=budget), on_event, tok.decode))

    with torch.inference_mode():
        while len(results) < total:
            while submitted < total and rng.random() < 0.6 and engine.waiting + engine.in_flight < 6:
                submit()
                submitted += 1
            engine.tick()
    assert all(got == want for got, want in results), [r for r in results if r[0] != r[1]]
    assert engine.largest_batch == 4  # slots were shared, and reused as requests left
    assert engine.largest_prefill > 1  # prompts of one length were prefilled together


def test_bounds(model):
    tok = model.tokenizer.resolved
    engine = _engine(model, max_batch=1, max_queue=1, max_tokens_in_flight=40)
    ids = chat_prompt_ids([("user", "Hi")], tok)
    ask = [EngineRequest(ids, model.settings(max_new_tokens=8), lambda e: None, tok.decode) for _ in range(3)]
    engine.submit(ask[0])  # takes the free slot at the next step
    engine.submit(ask[1])  # waits
    with pytest.raises(QueueFull):
        engine.submit(ask[2])
    with pytest.raises(ValueError, match="--max-tokens-in-flight"):
        engine.submit(EngineRequest(ids, model.settings(max_new_tokens=39), lambda e: None, tok.decode))
    with pytest.raises(ValueError, match="context"):
        engine.submit(EngineRequest(ids * 10, model.settings(max_new_tokens=8), lambda e: None, tok.decode))
