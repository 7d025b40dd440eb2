"""`olmo generate`: text from any checkpoint (native, upstream, sharded, Hugging Face), streamed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from olmo_cli.commands._options import (
    Dtype,
    DtypeOption,
    JsonOption,
    MaxNewTokensOption,
    RunDeviceOption,
    SeedOption,
    StopOption,
    TemperatureOption,
    TopKOption,
    TopPOption,
)

if TYPE_CHECKING:
    import torch

    from olmo_cli.data.tokenizer import ResolvedTokenizer
    from olmo_cli.model.generate import Completion, GenerationSettings
    from olmo_cli.model.olmo import OLMo


def generate_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CKPT",
            help="A checkpoint: stepN-unsharded/, a sharded stepN/, a run folder (its latest) or a Hugging "
            "Face Olmo directory.",
            show_default=False,
        ),
    ],
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt",
            "-p",
            metavar="TEXT",
            help="A prompt. Repeatable: several run as one batch.",
            show_default=False,
        ),
    ] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option(
            "--prompts-file",
            "-f",
            help='One prompt per line; or .jsonl with {"prompt": ...} or {"messages": [...]} per line; "-" '
            "reads stdin.",
            show_default=False,
            dir_okay=False,
            allow_dash=True,
        ),
    ] = None,
    chat: Annotated[
        bool,
        typer.Option(
            "--chat",
            help="Wrap each prompt as a user turn in the OLMo chat format (OLMo 2's with its tokenizer).",
        ),
    ] = False,
    max_new_tokens: MaxNewTokensOption = 128,
    temperature: TemperatureOption = 0.0,
    top_k: TopKOption = None,
    top_p: TopPOption = None,
    seed: SeedOption = None,
    stop: StopOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Prompts generated together.")] = 8,
    device: RunDeviceOption = None,
    dtype: DtypeOption = Dtype.auto,
    json_output: JsonOption = False,
) -> None:
    """Generate text from a checkpoint: greedy or sampled, with a KV cache, streaming to the terminal.

    Examples:

      olmo generate runs/olmo-tiny --prompt "The history of"

      olmo generate hf/OLMo-1B-hf -p "Language models are" -n 64 --temperature 0.8 --top-p 0.95 --seed 1

      olmo generate ckpt/step1000-unsharded --chat -p "Write a haiku about rivers." --stop "<|user|>"

      olmo generate runs/olmo-tiny --prompts-file prompts.jsonl --json > out.json
    """
    from dataclasses import replace

    from olmo_cli import ui
    from olmo_cli.errors import UsageError
    from olmo_cli.load.build import load_model, load_tokenizer
    from olmo_cli.load.read import read_checkpoint
    from olmo_cli.model.generate import GenerationSettings, check_cache_fits
    from olmo_cli.world import compute_dtype, pick_device

    try:  # checked before the (slow) model load
        settings = GenerationSettings(max_new_tokens, temperature, top_k, top_p, seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    texts, conversations = _read_prompts(prompt, prompts_file, chat)
    where = pick_device(device)
    torch_dtype = compute_dtype(dtype.value, where)
    found = read_checkpoint(checkpoint)
    for warning in found.warnings:
        ui.warn(warning)
    tokenizer = load_tokenizer(found)
    ids = tokenizer.identity
    settings = replace(settings, eos_token_id=ids.eos_token_id, pad_token_id=ids.pad_token_id)
    prompts = _encode(texts, conversations, tokenizer)
    rows = min(batch_size, len(prompts))
    check_cache_fits(found.config.model, max(map(len, prompts)), rows, max_new_tokens, torch_dtype, where)
    model = load_model(found, device=where, dtype=torch_dtype)
    _warn_length(prompts, max_new_tokens, found.config.model.max_sequence_length)
    stream = len(prompts) == 1 and not json_output
    start = time.perf_counter()
    results = _run(model, tokenizer, prompts, settings, stop or [], batch_size, stream)
    seconds = time.perf_counter() - start
    generated = sum(len(c.token_ids) for c in results)
    if json_output:
        out = _as_json(found.path, texts, results, settings, seconds, where, torch_dtype)
        out["quantization"] = found.quantization.summary() if found.quantization is not None else None
        ui.print_json(out)
        return
    if not stream:
        for i, (text, result) in enumerate(zip(texts, results, strict=True)):
            ui.console.rule(f"prompt {i + 1}", style="dim")
            ui.console.print(text, style="dim", markup=False, highlight=False)
            ui.console.out(result.text)
    weights = f", {found.quantization.describe()}" if found.quantization is not None else ""
    ui.err_console.print(
        f"[dim]{generated} tokens in {seconds:.2f}s ({generated / max(seconds, 1e-9):.1f} tokens/s, "
        f"{where} {str(torch_dtype).removeprefix('torch.')}{weights})[/]"
    )


def _read_prompts(
    prompt: list[str] | None, prompts_file: Path | None, chat: bool
) -> tuple[list[str], list[list[tuple[str, str]] | None]]:
    """(display text, conversation or None) per prompt; a conversation is rendered with the chat format."""
    import json
    import sys

    from olmo_cli.data.chat import ChatFormatError, parse_messages
    from olmo_cli.errors import UsageError

    if (prompt is None) == (prompts_file is None):
        raise UsageError("give --prompt TEXT or --prompts-file FILE (one of them)")
    if prompt is not None:
        return list(prompt), [[("user", p)] if chat else None for p in prompt]
    assert prompts_file is not None
    try:
        raw = sys.stdin.read() if str(prompts_file) == "-" else prompts_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {prompts_file}: {e}") from None
    lines = [line for line in raw.splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"{prompts_file} holds no prompts")
    if prompts_file.suffix != ".jsonl":
        return lines, [[("user", line)] if chat else None for line in lines]
    texts, conversations = [], []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if "messages" in record:
                messages = parse_messages(record)
                texts.append(messages[-1][1])
                conversations.append(messages)
                continue
            text = record["prompt"]
            if not isinstance(text, str):
                raise TypeError("`prompt` is not a string")
        except (ValueError, KeyError, TypeError, ChatFormatError) as e:
            raise UsageError(
                f"{prompts_file} line {number}: {e}",
                hint='each line is {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}',
            ) from None
        texts.append(text)
        conversations.append([("user", text)] if chat else None)
    return texts, conversations


def _encode(
    texts: list[str], conversations: list[list[tuple[str, str]] | None], tokenizer: ResolvedTokenizer
) -> list[list[int]]:
    from olmo_cli.data.prompts import chat_prompt_ids, prompt_ids

    return [
        prompt_ids(text, tokenizer) if conversation is None else chat_prompt_ids(conversation, tokenizer)
        for text, conversation in zip(texts, conversations, strict=True)
    ]


def _warn_length(prompts: list[list[int]], max_new_tokens: int, trained: int) -> None:
    from olmo_cli import ui

    longest = max(map(len, prompts)) + max_new_tokens
    if longest > trained:
        ui.warn(
            f"prompt + --max-new-tokens reaches {longest} tokens, past the {trained} the model was "
            "trained on; quality drops beyond it"
        )


def _run(
    model: OLMo,
    tokenizer: ResolvedTokenizer,
    prompts: list[list[int]],
    settings: GenerationSettings,
    stop: list[str],
    batch_size: int,
    stream: bool,
) -> list[Completion]:
    from olmo_cli import ui
    from olmo_cli.model.generate import generate_text

    on_text = (lambda _row, delta: ui.console.out(delta, end="", highlight=False)) if stream else None
    results = []
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first : first + batch_size]
        results += generate_text(model, tokenizer, batch, settings, stop_strings=stop, on_text=on_text)
    if stream:
        ui.console.out("")
    return results


def _as_json(
    path: Path,
    texts: list[str],
    results: list[Completion],
    settings: GenerationSettings,
    seconds: float,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    generated = sum(len(c.token_ids) for c in results)
    return {
        "checkpoint": str(path),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "settings": {k: v for k, v in settings.__dict__.items()},
        "seconds": round(seconds, 4),
        "tokens_per_second": round(generated / max(seconds, 1e-9), 2),
        "results": [
            {
                "prompt": text,
                "completion": result.text,
                "finish_reason": result.finish_reason,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": len(result.token_ids),
                "token_ids": result.token_ids,
            }
            for text, result in zip(texts, results, strict=True)
        ],
    }
