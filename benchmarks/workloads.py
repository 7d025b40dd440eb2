"""The model shapes the benchmarks share, as config overrides on the tiny preset (`model.KEY=VALUE`).

python benchmarks/workloads.py      # lists them
"""

from __future__ import annotations

import sys

MODELS: dict[str, dict[str, object]] = {
    "tiny": {},  # the preset's own model: d_model 256, 4 layers, 4 heads, vocab 4096, tied
    "large": {"d_model": 1024, "n_heads": 16, "n_layers": 8},
    # d_model 512, 8 layers, 8 heads, SwiGLU hidden 1536 (mlp_hidden_size is ff_proj's width, both
    # branches: 2 x 1536), vocabulary 50304 untied: the workload issue 20 measures training on
    "compass": {
        "d_model": 512,
        "n_layers": 8,
        "n_heads": 8,
        "mlp_hidden_size": 3072,
        "vocab_size": 50304,
        "embedding_size": 50304,
        "weight_tying": False,
    },
}


def overrides(model: str) -> list[str]:
    """The `--set`-style overrides that turn the tiny preset's model into `model`."""
    return [f"model.{key}={value}" for key, value in MODELS[model].items()]


if __name__ == "__main__":
    for name in MODELS:
        print(f"{name}: {', '.join(overrides(name)) or 'the tiny preset as it is'}")
    sys.exit(0)
