"""Generation throughput of `olmo generate`'s engine against transformers' `generate`, same model.

One random model from a preset (default: tiny; `--model compass` and the other shapes of
benchmarks/workloads.py change its size on top of it) is written as a native checkpoint, converted with
`convert-hf`, and loaded by both sides from disk: ours from the native checkpoint, transformers'
`AutoModelForCausalLM.from_pretrained` from the export. Same dtype, same thread count, greedy, a prompt
of --prompt-len tokens and --new-tokens new tokens (EOS never ends a row early on either side), at each
batch size. Repetitions are interleaved (ours, theirs, ours, ...) so that load from others sharing
the machine hits both alike; the median counts. Both outputs are checked token for token first.

Prints tokens/s for each side and batch size (median, min-max), then the ratio ours/transformers at
batch 1 last; with --json that goes to stderr and stdout gets one JSON object (benchmarks/measures.py).

    python benchmarks/bench_generate.py [--preset tiny] [--dtype fp32|bf16] [--threads 2] [--repeats 5]
    python benchmarks/bench_generate.py --model compass --dtype bf16   # d_model 512, 8 layers, vocab 50304
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from measures import measure, run_benchmark, span  # noqa: E402
from workloads import MODELS, overrides  # noqa: E402

from olmo_cli.checkpoint.unsharded import write_unsharded  # noqa: E402
from olmo_cli.config.loader import load_config  # noqa: E402
from olmo_cli.config.yamlio import dump_yaml  # noqa: E402
from olmo_cli.convert.export import export_hf  # noqa: E402
from olmo_cli.load.build import load_model, load_tokenizer  # noqa: E402
from olmo_cli.load.read import read_checkpoint  # noqa: E402
from olmo_cli.model.generate import GenerationSettings, generate_ids  # noqa: E402
from olmo_cli.model.olmo import build_model  # noqa: E402


def make_models(
    preset: str, model: str, dtype: torch.dtype, directory: Path
) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    import transformers

    settings = [*overrides(model), "model.init_std=0.3", "model.init_fn=normal"]
    cfg = load_config(preset=preset, overrides=settings).config
    native = build_model(cfg.model, seed=0)
    write_unsharded(
        directory / "step0-unsharded", native.state_dict(), None, None, dump_yaml(cfg.model_dump(mode="json"))
    )
    found = read_checkpoint(directory / "step0-unsharded")
    export_hf(found, load_tokenizer(found), directory / "hf")
    ours = load_model(found, dtype=dtype)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(directory / "hf", dtype=dtype).eval()
    return ours, theirs, cfg.model.vocab_size


def run_ours(model: torch.nn.Module, prompts: torch.Tensor, new: int) -> list[list[int]]:
    settings = GenerationSettings(max_new_tokens=new, pad_token_id=1)  # no EOS: always `new` tokens
    return [g.token_ids for g in generate_ids(model, prompts.tolist(), settings)]


def run_theirs(model: torch.nn.Module, prompts: torch.Tensor, new: int) -> list[list[int]]:
    with torch.inference_mode():
        out = model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            pad_token_id=1,
        )
    return out[:, prompts.shape[1] :].tolist()


def timed(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny", help="shape on top of the preset")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--repeats", type=int, default=5)
    return run_benchmark("generate", parser, run)


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs, vocab = make_models(args.preset, args.model, dtype, Path(tmp))
    label = args.preset if args.model == "tiny" else f"{args.preset} as {args.model}"
    print(
        f"preset {label}, {args.dtype}, {args.threads} threads, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, greedy, median of {args.repeats} interleaved runs"
    )
    ratios, measures = {}, []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        prompts = torch.randint(
            2, vocab, (batch, args.prompt_len), generator=torch.Generator().manual_seed(batch)
        )
        same = run_ours(ours, prompts, args.new_tokens) == run_theirs(theirs, prompts, args.new_tokens)
        ours_s, theirs_s = [], []
        for _ in range(args.repeats):
            ours_s.append(timed(run_ours, ours, prompts, args.new_tokens))
            theirs_s.append(timed(run_theirs, theirs, prompts, args.new_tokens))
        tokens = batch * args.new_tokens
        found = measure(
            f"generate batch {batch} ({label}, {args.dtype})",
            "tokens/s",
            [tokens / s for s in ours_s],
            [tokens / s for s in theirs_s],
            "transformers generate",
        )
        found["same_tokens"] = same
        measures.append(found)
        a, b = found["ours"], found["anchor"]
        ratios[batch] = a / b
        print(
            f"batch {batch}: olmo {a:,.0f} tokens/s ({span(found['ours_spread'])}), transformers {b:,.0f} "
            f"tokens/s ({span(found['anchor_spread'])}), ratio {a / b:.2f}x (same tokens: {same})"
        )
    first = min(ratios)
    print(f"ratio olmo/transformers at batch {first}: {ratios[first]:.2f}x")
    return measures


if __name__ == "__main__":
    sys.exit(main())
