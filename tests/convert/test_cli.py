"""`olmo convert-hf` and `olmo generate` as a user runs them: through the CLI's own entry point (in
process, to keep the tests fast; one real subprocess checks the installed script)."""

from __future__ import annotations

import json

from tests._fixtures import write_checkpoint
from tests.cli._helpers import run_olmo, run_olmo_here

from ._helpers import tiny_train_config


def test_convert_both_ways_then_generate_the_same_text(tmp_path) -> None:
    native_dir, _ = write_checkpoint(tmp_path, tiny_train_config("model.weight_tying=false"))
    out = run_olmo_here(
        "convert-hf", str(tmp_path), "--output", str(tmp_path / "hf"), "--max-shard-size", "300KB", "--json"
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["source"] == str(native_dir) and summary["weight_files"] > 1
    back = tmp_path / "back" / "step0-unsharded"
    out = run_olmo_here("convert-hf", "--from-hf", str(tmp_path / "hf"), "--output", str(back))
    assert out.returncode == 0, out.stderr
    assert (back / "model.safetensors").is_file() and (back / "config.yaml").is_file()

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The history of"}\n{"prompt": "def main():"}\n')
    runs = [
        run_olmo_here("generate", str(path), "--prompts-file", str(prompts), "-n", "12", "--json")
        for path in (native_dir, tmp_path / "hf", back)
    ]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    results = [json.loads(r.stdout)["results"] for r in runs]
    assert results[0] == results[1] == results[2]
    assert [r["completion_tokens"] for r in results[0]] == [12, 12]

    # Streamed to the terminal by the installed script: the same text as the JSON completion.
    streamed = run_olmo("generate", str(tmp_path / "hf"), "--prompt", "The history of", "-n", "12")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == results[0][0]["completion"] + "\n"
    assert "tokens/s" in streamed.stderr


def test_generate_stop_string_chat_and_sampling(tmp_path) -> None:
    native_dir, _ = write_checkpoint(tmp_path, tiny_train_config())
    free = json.loads(run_olmo_here("generate", str(native_dir), "-p", "Once", "-n", "20", "--json").stdout)
    text = free["results"][0]["completion"]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = json.loads(
        run_olmo_here("generate", str(native_dir), "-p", "Once", "-n", "20", "--stop", stop, "--json").stdout
    )
    assert cut["results"][0]["completion"] == text[: text.index(stop)]
    assert cut["results"][0]["finish_reason"] == "stop"

    chat = run_olmo_here("generate", str(native_dir), "--chat", "-p", "Hi", "-n", "5", "--json")
    assert chat.returncode == 0 and json.loads(chat.stdout)["results"][0]["prompt_tokens"] > 3

    args = [
        "generate",
        str(native_dir),
        "-p",
        "Once",
        "-n",
        "10",
        "--temperature",
        "1",
        "--top-k",
        "20",
        "--json",
    ]
    one, two = (json.loads(run_olmo_here(*args, "--seed", "1").stdout) for _ in range(2))
    assert one["results"] == two["results"]


def test_user_errors(tmp_path) -> None:
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    out = run_olmo_here("convert-hf", "--from-hf", str(tmp_path / "llama"), "--output", str(tmp_path / "x"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "not an OLMo ('olmo' or 'olmo2') model" in out.stderr
    out = run_olmo_here("generate", str(tmp_path / "nothing"), "-p", "x")
    assert out.returncode == 4 and "does not exist" in out.stderr
    native_dir, _ = write_checkpoint(tmp_path, tiny_train_config())
    out = run_olmo_here("generate", str(native_dir))
    assert out.returncode == 2 and "--prompt" in out.stderr
