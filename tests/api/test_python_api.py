"""The Python API (`import olmo_cli as olmo`) against the commands and the engine it is a layer over:
`generate` gives what `olmo generate` prints, `perplexity` what `olmo eval --perplexity` reports,
`loglikelihood` a direct torch computation; every checkpoint kind loads (native unsharded, sharded,
Hugging Face, quantized); the README's example runs as written."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import olmo_cli as olmo
from olmo_cli.errors import CheckpointError, OlmoError, UsageError
from tests.cli._helpers import ROOT, clean_env, run_olmo_here

from ._helpers import CONTEXT, EXCHANGES, trained_chat_checkpoint

PROMPTS = ["Hi", "Name a river.", "The history of"]


@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> dict[str, Path]:
    """The trained chat model as each checkpoint kind: unsharded, sharded, hf, quantized (int8)."""
    from olmo_cli.checkpoint.sharded import write_sharded
    from olmo_cli.config.yamlio import dump_yaml
    from olmo_cli.world import close_world, init_world

    root = tmp_path_factory.mktemp("api-kinds")
    native = trained_chat_checkpoint(root / "native")
    model = olmo.load(native)
    world = init_world("cpu")
    try:
        state = {
            "epoch": 0,
            "global_step": 80,
            "global_train_examples_seen_this_epoch": 0,
            "global_train_tokens_seen": 0,
            "world_size": 1,
        }
        config_yaml = dump_yaml(model.config.model_dump(mode="json"))
        sharded = write_sharded(
            root / "sharded" / "step80",
            model=model.torch_module,
            optim=None,
            trainer_state=state,
            config_yaml=config_yaml,
            world=world,
        )
    finally:
        close_world(world)
    for args in (
        ["convert-hf", str(native), "--output", str(root / "hf")],
        ["quantize", str(native), "--method", "int8", "--output", str(root / "int8")],
    ):
        out = run_olmo_here(*args)
        assert out.returncode == 0, out.stderr
    return {"unsharded": native, "sharded": sharded, "hf": root / "hf", "quantized": root / "int8"}


@pytest.fixture(scope="module")
def model(kinds):
    return olmo.load(kinds["unsharded"])


def _olmo_generate(path: Path, *args: str) -> list[dict]:
    out = run_olmo_here("generate", str(path), *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["results"]


@pytest.mark.parametrize("kind", ["unsharded", "sharded", "hf", "quantized"])
def test_every_kind_generates_what_olmo_generate_prints(kinds, kind):
    m = olmo.load(kinds[kind])
    assert m.kind == kind and isinstance(m.torch_module, torch.nn.Module)
    expected = _olmo_generate(kinds[kind], *[a for p in PROMPTS for a in ("-p", p)], "-n", "12")
    assert m.generate(PROMPTS, max_new_tokens=12) == [r["completion"] for r in expected]
    assert m.generate(PROMPTS[0], max_new_tokens=12) == expected[0]["completion"]
    chat = _olmo_generate(kinds[kind], "--chat", "-p", EXCHANGES[1][0], "-n", "12")[0]["completion"]
    assert m.generate(EXCHANGES[1][0], max_new_tokens=12, chat=True) == chat


def test_sampling_and_stop_strings_match_the_command(model, kinds):
    sampling = {"max_new_tokens": 16, "temperature": 1.5, "top_k": 50}
    # a seed whose sample is long enough to cut (a trained model often stops at EOS early)
    seed = next(s for s in range(50) if len(model.generate("The history of", **sampling, seed=s)) >= 6)
    args = ["-p", "The history of", "-n", "16", "--temperature", "1.5", "--top-k", "50", "--seed", str(seed)]
    expected = _olmo_generate(kinds["unsharded"], *args)[0]["completion"]
    assert model.generate("The history of", **sampling, seed=seed) == expected
    stop = expected[3:5]
    cut = _olmo_generate(kinds["unsharded"], *args, "--stop", stop)[0]["completion"]
    assert model.generate("The history of", **sampling, seed=seed, stop=[stop]) == cut
    assert cut == expected[: expected.index(stop)]


def test_streaming_yields_the_same_text_in_pieces(model):
    prompt, answer = EXCHANGES[3]
    whole = model.generate(prompt, max_new_tokens=24, chat=True)
    pieces = list(model.generate(prompt, max_new_tokens=24, chat=True, stream=True))
    assert len(pieces) > 1 and "".join(pieces) == whole == answer
    chat_pieces = list(model.chat([{"role": "user", "content": prompt}], stream=True))
    assert chat_pieces == pieces
    stream = model.generate(prompt, max_new_tokens=24, chat=True, stream=True)
    assert next(stream) == pieces[0]
    stream.close()  # leaving early stops the worker; the model stays usable
    assert model.generate(prompt, max_new_tokens=24, chat=True) == whole


def test_chat_and_the_session_answer_as_generate_chat(model, kinds, tmp_path):
    for user, assistant in EXCHANGES:
        assert model.chat([{"role": "user", "content": user}], max_new_tokens=20) == assistant
    expected = _olmo_generate(kinds["unsharded"], "--chat", "-p", "Hi", "-n", "20")[0]
    session = olmo.ChatSession(model, max_new_tokens=20)
    reply = session.reply("Hi")
    assert reply.completion.token_ids == expected["token_ids"] and reply.text == expected["completion"]
    assert reply.prompt_tokens == expected["prompt_tokens"] and reply.dropped == 0
    fitted = []
    session.reply("Hi again", on_fitted=fitted.append)
    assert [r for r, _ in session.messages] == ["user", "assistant", "user", "assistant"]
    # The second turn's prompt is the conversation, rendered as `generate --prompts-file` renders it.
    assert fitted[0].messages == session.messages[:3] and fitted[0].dropped == 0
    prompts = tmp_path / "p.jsonl"
    record = {"messages": [{"role": r, "content": c} for r, c in session.messages[:3]]}
    prompts.write_text(json.dumps(record) + "\n")
    again = _olmo_generate(kinds["unsharded"], "--prompts-file", str(prompts), "-n", "20")[0]
    assert session.messages[3][1] == again["completion"]
    path = session.save(tmp_path / "chat.jsonl")
    assert json.loads(path.read_text()) == session.as_record()
    session.system = "Be brief."
    session.reset()
    assert session.messages == [("system", "Be brief.")]
    with pytest.raises(UsageError, match="cannot write"):
        session.save(tmp_path / "chat.jsonl" / "under-a-file.jsonl")


def test_a_long_conversation_drops_its_oldest_turns(model):
    session = olmo.ChatSession(model, system="Be nice.", max_new_tokens=20)
    seen = []
    for user, _ in EXCHANGES:
        reply = session.reply(user, on_fitted=seen.append)
        assert reply.prompt_tokens + 20 <= CONTEXT and reply.fits
    assert any(fit.dropped for fit in seen)
    assert all(fit.messages[0] == ("system", "Be nice.") for fit in seen)
    assert all(fit.messages[-1][0] == "user" for fit in seen)


def test_an_interrupted_reply_keeps_what_was_shown(model):
    session = olmo.ChatSession(model, max_new_tokens=20)
    shown = []

    def show(piece: str) -> None:
        shown.append(piece)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        session.reply("Hi", on_text=show)
    assert session.messages == [("user", "Hi"), ("assistant", shown[0])]


def _direct_loglikelihood(model, context: str, continuation: str) -> float:
    ctx = model.tokenizer.encode(context) or [model.tokenizer.eos_token_id]
    cont = model.tokenizer.encode(continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model.torch_module(ids[:, :-1]).double(), dim=-1)[0]
    return sum(logp[len(ctx) - 1 + i, token].item() for i, token in enumerate(cont))


def test_loglikelihood_is_the_summed_log_probability(model):
    pairs = [("Q: Name a river. A:", " The Nile."), ("The history of", " rivers"), ("", "Hello")]
    batch = model.loglikelihood([c for c, _ in pairs], [x for _, x in pairs])
    for (context, continuation), value in zip(pairs, batch, strict=True):
        direct = _direct_loglikelihood(model, context, continuation)
        assert value == pytest.approx(direct, abs=1e-4)
        assert model.loglikelihood(context, continuation) == pytest.approx(value, abs=1e-9)
    assert model.loglikelihood([], []) == []
    with pytest.raises(UsageError):
        model.loglikelihood(["a", "b"], ["c"])


def test_perplexity_is_olmo_eval_perplexity(model, kinds, tmp_path):
    texts = [f"{user} {assistant} " * 3 for user, assistant in EXCHANGES]
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = run_olmo_here("eval", str(kinds["unsharded"]), "--perplexity", str(data), "--json")
    assert out.returncode == 0, out.stderr
    reported = json.loads(out.stdout)["perplexity"]["texts"]
    assert model.perplexity(data) == pytest.approx(reported["perplexity"], rel=1e-9)
    assert model.perplexity(texts) == pytest.approx(reported["perplexity"], rel=1e-9)
    # token-weighted: exp(summed NLL / predicted tokens)
    assert reported["perplexity"] == pytest.approx(math.exp(reported["nll_sum"] / reported["tokens"]))
    short = model.perplexity(texts, seq_len=16)
    assert short != pytest.approx(reported["perplexity"]) and short > 1


def test_tokenizer_config_and_module(model):
    tok = model.tokenizer
    ids = tok.encode("Hello there!")
    assert tok.decode(ids) == "Hello there!" and ids[-1] != tok.eos_token_id
    assert tok.encode("Hello there!", add_eos=True) == [*ids, tok.eos_token_id]
    assert tok.eos_token_id == model.config.model.eos_token_id and len(tok) == tok.vocab_size == 4096
    expected = _olmo_generate(model.path, "--chat", "-p", "Hi", "-n", "1")[0]["prompt_tokens"]
    assert len(tok.chat_prompt([("user", "Hi")])) == expected
    assert model.config.model.max_sequence_length == CONTEXT == model.max_sequence_length
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert "unsharded" in repr(model)
    assert olmo.load(model.path, dtype="bf16").dtype == torch.bfloat16


def test_errors_are_olmo_errors_not_exits(model, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        olmo.load(tmp_path / "nothing")
    with pytest.raises(UsageError, match="temperature"):
        model.generate("x", temperature=-1)
    with pytest.raises(UsageError, match="one prompt"):
        model.generate(["a", "b"], stream=True)
    with pytest.raises(UsageError, match="dtype"):
        olmo.load(model.path, dtype="fp8")
    with pytest.raises(UsageError, match="chat messages"):
        model.chat([{"role": "user"}])
    with pytest.raises(OlmoError):
        model.perplexity(tmp_path / "missing.jsonl")


def test_the_package_stays_light_until_the_api_is_used():
    code = (
        "import sys, olmo_cli as olmo\n"
        "assert 'torch' not in sys.modules\n"
        "assert callable(olmo.load) and 'torch' not in sys.modules\n"
        "import olmo_cli.load.read\n"
        "assert callable(olmo.load) and olmo.load.read.read_checkpoint\n"
        "assert olmo.Model.__name__ == 'Model' and 'torch' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def readme_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    section = (ROOT / "README.md").read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's Python API section has no python block"
    return blocks[0]


def test_the_readme_example_runs_as_written(kinds, tmp_path):
    """Run in a folder holding runs/olmo-tiny, the run folder the example names (its checkpoint inside)."""
    import shutil

    run = tmp_path / "runs" / "olmo-tiny"
    run.mkdir(parents=True)
    shutil.copytree(kinds["unsharded"], run / kinds["unsharded"].name)
    code = readme_example()
    assert 'olmo.load("runs/olmo-tiny")' in code
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
