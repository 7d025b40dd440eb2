"""The Python API: a thin, stable layer over the engine for notebooks and scripts.

    import olmo_cli as olmo
    m = olmo.load("runs/olmo-tiny")           # any checkpoint kind `olmo generate` takes
    m.generate("Language modeling is", max_new_tokens=32)

- `model`: `load` (read through `olmo_cli.load`, the one dispatcher) and `Model`: `generate` (one prompt
  or a batch, streaming or not, plain or in the chat format), `chat`, `loglikelihood` (what `olmo eval`'s
  scorer computes), `perplexity` (what `olmo eval --perplexity` computes), `tokenizer`, `config`,
  `torch_module`.
- `tokenizer`: `Tokenizer`, the checkpoint's tokenizer with its EOS and pad ids.
- `chat`: `ChatSession`, a multi-turn conversation kept inside the model's context (`olmo chat` is one).
- `stream`: a callback-driven generation turned into an iterator of text pieces.

This is the top engine unit: it may import every engine package, never the CLI layer. `olmo_cli`'s own
`__init__` reaches it lazily (docs/architecture.md, the layers), so `import olmo_cli` stays light.
Errors are `olmo_cli.errors` exceptions; nothing here prints or exits.
"""

from __future__ import annotations

from olmo_cli.api.chat import ChatReply, ChatSession
from olmo_cli.api.model import Model, load
from olmo_cli.api.tokenizer import Tokenizer

__all__ = ["ChatReply", "ChatSession", "Model", "Tokenizer", "load"]
