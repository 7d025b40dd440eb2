"""Generation speed of weight-only int8 (and int4) against the fp32 model they came from (the anchor).

One random model large enough that reading the weights is the cost (default d_model 2048, 4 layers,
OLMo-1B's vocabulary: 0.4B parameters) is written as a native checkpoint, quantized with the same code
`olmo quantize` runs, and each variant is loaded from disk with `load_model`, as `olmo generate` does.
Greedy, a --prompt-len prompt and --new-tokens new tokens (EOS never ends a row early), at each batch
size; repetitions are interleaved (fp32, int8, int4, fp32, ...) so that load from others sharing the
machine hits all alike, and the median counts (the best run is shown too). Also prints the size of
each checkpoint's weights file.

Prints tokens/s per variant and batch size, then the int8/fp32 ratio at batch 1 last; with --json that
goes to stderr and stdout gets one JSON object (benchmarks/measures.py's `measures`: each variant at each
batch size against fp32).

    python benchmarks/bench_quantize.py [--d-model 2048] [--layers 4] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from measures import measure, run_benchmark  # noqa: E402

from olmo_cli.checkpoint.unsharded import write_unsharded  # noqa: E402
from olmo_cli.config.loader import load_config  # noqa: E402
from olmo_cli.config.yamlio import dump_yaml  # noqa: E402
from olmo_cli.eval.quantized import weights_bytes  # noqa: E402
from olmo_cli.load.build import load_model  # noqa: E402
from olmo_cli.load.read import read_checkpoint  # noqa: E402
from olmo_cli.model.generate import GenerationSettings, generate_ids  # noqa: E402
from olmo_cli.model.olmo import build_model  # noqa: E402
from olmo_cli.quant.checkpoint import write_quantized  # noqa: E402
from olmo_cli.quant.model import quantize_state  # noqa: E402
from olmo_cli.quant.settings import QuantLayout, QuantSettings  # noqa: E402

VARIANTS = {"int8": QuantSettings("int8"), "int4": QuantSettings("int4", 128)}


def write_checkpoints(args: argparse.Namespace, directory: Path) -> dict[str, Path]:
    overrides = [
        f"model.d_model={args.d_model}",
        f"model.n_heads={args.d_model // 128}",
        f"model.n_layers={args.layers}",
        "model.mlp_ratio=8",
        "model.vocab_size=50280",
        "model.embedding_size=50304",
        "model.max_sequence_length=1024",
    ]
    cfg = load_config(preset="tiny", overrides=overrides).config
    model = build_model(cfg.model, seed=0)
    text = dump_yaml(cfg.model_dump(mode="json"))
    paths = {"fp32": write_unsharded(directory / "fp32", model.state_dict(), None, None, text)}
    del model
    found = read_checkpoint(paths["fp32"])
    for name, settings in VARIANTS.items():
        tensors, modules = quantize_state(found.state, cfg.model, settings)
        layout = QuantLayout(settings, modules)
        paths[name] = write_quantized(
            directory / name, tensors=tensors, layout=layout, config_yaml_text=text, tokenizer_json=None
        )
    return paths


def generate(model: torch.nn.Module, batch: int, prompt_len: int, new: int) -> float:
    prompt = [[(7 * i + 3) % 50000 + 2 for i in range(prompt_len)]] * batch
    settings = GenerationSettings(max_new_tokens=new, eos_token_id=None)
    start = time.perf_counter()
    generate_ids(model, prompt, settings)
    return batch * new / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--d-model", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    return run_benchmark("quantize", parser, run)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_checkpoints(args, Path(tmp))
        models = {name: load_model(read_checkpoint(path)) for name, path in paths.items()}
        sizes = {name: weights_bytes(read_checkpoint(path)) for name, path in paths.items()}
    print(f"d_model {args.d_model}, {args.layers} layers, {args.threads} threads, torch {torch.__version__}")
    for name, size in sizes.items():
        print(
            f"weights on disk {name:>5}: {size / 2**20:8.1f} MiB ({100 * size / sizes['fp32']:.1f}% of fp32)"
        )
    results: dict[tuple[str, int], list[float]] = {}
    for batch in args.batch_sizes:
        for model in models.values():  # warm-up: allocator, int4 tile layout, thread pool
            generate(model, batch, args.prompt_len, 2)
        for _ in range(args.repeats):
            for name, model in models.items():
                results.setdefault((name, batch), []).append(
                    generate(model, batch, args.prompt_len, args.new_tokens)
                )
    for batch in args.batch_sizes:
        fp32 = statistics.median(results[("fp32", batch)])
        for name in models:
            speed, best = statistics.median(results[(name, batch)]), max(results[(name, batch)])
            ratio = speed / fp32
            print(f"batch {batch:>2} {name:>5}: {speed:8.1f} tokens/s  ({ratio:.2f}x fp32; best {best:.1f})")
    if 1 in args.batch_sizes:
        ratio = statistics.median(results[("int8", 1)]) / statistics.median(results[("fp32", 1)])
        print(f"int8/fp32 generation speed at batch 1: {ratio:.2f}x")
    measures = [
        measure(f"generate {name} batch {batch} (d_model {args.d_model}, {args.layers} layers)", "tokens/s",
                results[(name, batch)], results[("fp32", batch)], "fp32, same model")
        for batch in args.batch_sizes
        for name in VARIANTS
    ]  # fmt: skip
    return {"measures": measures, "weights_bytes": sizes}


if __name__ == "__main__":
    sys.exit(main())
