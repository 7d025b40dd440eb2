"""`load(path)` -> `Model`: a checkpoint of any kind on a device, with generation, scoring and perplexity.

Every method calls the engine piece the matching command uses, so its numbers are that command's:
`generate` is `olmo generate` (`model.generate.generate_text`, prompts from `data.prompts`),
`loglikelihood` is `olmo eval`'s scorer (`eval.requests` + `eval.scoring`), `perplexity` is
`olmo eval --perplexity` (`eval.perplexity_sources`: token-weighted, summed NLL over predicted tokens).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from olmo_cli.api.tokenizer import Tokenizer, as_messages
from olmo_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

    from olmo_cli.checkpoint.weights import CheckpointWeights
    from olmo_cli.config.schema import TrainConfig
    from olmo_cli.data.tokenizer import ResolvedTokenizer
    from olmo_cli.model.generate import Completion, GenerationSettings
    from olmo_cli.model.olmo import OLMo

__all__ = ["Model", "load"]


def load(path: str | Path, *, device: str | torch.device | None = "cpu", dtype: Any = "auto") -> Model:
    """Opens a checkpoint: stepN-unsharded/, a sharded stepN/, a run folder (its latest), a Hugging Face
    OLMo directory, a quantized directory or a LoRA adapter (merged into its base).

    `device`: "cpu", "cuda", "cuda:1", ... (None: cuda when there is one). `dtype`: "auto" (bf16 on a
    GPU, fp32 on the CPU), "fp32"/"float32", "bf16"/"bfloat16", "fp16"/"float16" or a torch dtype. The
    checkpoint's warnings are issued as Python warnings and kept in `Model.warnings`.
    """
    from olmo_cli.load.build import load_tokenizer
    from olmo_cli.load.read import read_checkpoint

    found = read_checkpoint(path)
    for message in found.warnings:
        warnings.warn(message, stacklevel=2)
    return Model.from_checkpoint(found, load_tokenizer(found), device=device, dtype=dtype)


def _placement(device: str | torch.device | None, dtype: Any) -> tuple[torch.device, torch.dtype]:
    import torch

    from olmo_cli.world import compute_dtype, pick_device

    where = pick_device(None if device is None else str(device))
    if isinstance(dtype, torch.dtype):
        return where, dtype
    return where, compute_dtype(dtype, where)  # a UsageError naming the choices for an unknown name


class Model:
    """A loaded checkpoint. `torch_module` is the eval-mode `nn.Module`, `config` the checkpoint's run
    config (`config.model` its architecture), `tokenizer` its tokenizer."""

    def __init__(
        self,
        module: OLMo,
        tokenizer: ResolvedTokenizer,
        config: TrainConfig,
        *,
        path: Path,
        kind: str,
        warnings: Sequence[str] = (),
    ) -> None:
        self.torch_module = module
        self.tokenizer = Tokenizer(tokenizer)
        self.config = config
        self.path = path
        self.kind = kind
        self.warnings = list(warnings)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: CheckpointWeights,
        tokenizer: ResolvedTokenizer,
        *,
        device: str | torch.device | None = "cpu",
        dtype: Any = "auto",
    ) -> Model:
        """A model from an already read checkpoint (`olmo_cli.load.read.read_checkpoint`)."""
        from olmo_cli.load.build import load_model

        where, torch_dtype = _placement(device, dtype)
        module = load_model(checkpoint, device=where, dtype=torch_dtype)
        return cls(
            module,
            tokenizer,
            checkpoint.config,
            path=checkpoint.path,
            kind=checkpoint.kind,
            warnings=checkpoint.warnings,
        )

    @property
    def device(self) -> torch.device:
        from olmo_cli.model.generate import model_placement

        return model_placement(self.torch_module)[1]

    @property
    def dtype(self) -> torch.dtype:
        from olmo_cli.model.generate import model_placement

        return model_placement(self.torch_module)[0]

    @property
    def max_sequence_length(self) -> int:
        return self.config.model.max_sequence_length

    def __repr__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"Model({str(self.path)!r}, kind={self.kind!r}, device={str(self.device)!r}, dtype={dtype!r})"

    # ---- generation -------------------------------------------------------------------------------

    def settings(
        self,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> GenerationSettings:
        """Checked generation settings with this tokenizer's EOS and pad ids (temperature 0: greedy)."""
        from olmo_cli.model.generate import GenerationSettings

        ids = self.tokenizer.resolved.identity
        try:
            return GenerationSettings(
                max_new_tokens, temperature, top_k, top_p, seed, ids.eos_token_id, ids.pad_token_id
            )
        except ValueError as e:
            raise UsageError(str(e)) from None

    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        chat: bool = False,
        stream: bool = False,
        batch_size: int = 8,
    ) -> Any:
        """The text generated after `prompt` (a list of prompts: a list of texts, generated `batch_size`
        at a time), as `olmo generate` makes it; `chat` wraps each prompt as a user turn in the chat
        format (`olmo generate --chat`). `stream`: an iterator of text pieces as they are generated (one
        prompt only). A stop string ends a completion and is not part of it."""
        from olmo_cli.data.prompts import chat_prompt_ids, prompt_ids

        single = isinstance(prompt, str)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise UsageError("generate takes a prompt string or a non-empty list of them")
        resolved = self.tokenizer.resolved
        ids = [chat_prompt_ids([("user", p)], resolved) if chat else prompt_ids(p, resolved) for p in prompts]
        settings = self.settings(max_new_tokens, temperature, top_k, top_p, seed)
        if stream:
            if not single:
                raise UsageError("stream=True generates one prompt; give a string, not a list")
            return self.stream_ids(ids[0], settings, stop=stop)
        texts = [c.text for c in self.complete(ids, settings, stop=stop, batch_size=batch_size)]
        return texts[0] if single else texts

    def chat(
        self,
        messages: Sequence[Any],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        stream: bool = False,
    ) -> Any:
        """The assistant's next reply to a conversation, `[{"role": "system"|"user"|"assistant",
        "content": "..."}, ...]` (or (role, content) pairs); `stream`: an iterator of text pieces. For a
        conversation that keeps going (and is kept inside the context), use `olmo_cli.ChatSession`."""
        ids = self.tokenizer.chat_prompt(as_messages(messages))
        settings = self.settings(max_new_tokens, temperature, top_k, top_p, seed)
        if stream:
            return self.stream_ids(ids, settings, stop=stop)
        return self.complete([ids], settings, stop=stop)[0].text

    def complete(
        self,
        prompts: Sequence[Sequence[int]],
        settings: GenerationSettings,
        *,
        stop: Sequence[str] = (),
        batch_size: int = 8,
        on_text: Any = None,
    ) -> list[Completion]:
        """The engine's completions (text, token ids, finish reason) for prompts given as token ids;
        `on_text(row, piece)` is told each row's text as it becomes final."""
        from olmo_cli.model.generate import check_cache_fits, generate_text

        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        longest = max(len(p) for p in prompts)
        check_cache_fits(
            self.config.model,
            longest,
            min(batch_size, len(prompts)),
            settings.max_new_tokens,
            self.dtype,
            self.device,
        )
        results: list[Completion] = []
        for first in range(0, len(prompts), batch_size):
            batch = prompts[first : first + batch_size]

            def shifted(row: int, piece: str, first: int = first) -> None:
                on_text(first + row, piece)

            results += generate_text(
                self.torch_module,
                self.tokenizer.resolved,
                batch,
                settings,
                stop_strings=list(stop),
                on_text=shifted if on_text is not None else None,
            )
        return results

    def stream_ids(
        self, prompt: Sequence[int], settings: GenerationSettings, *, stop: Sequence[str] = ()
    ) -> Iterator[str]:
        """The completion of one prompt (token ids) as an iterator of text pieces."""
        from olmo_cli.api.stream import stream_pieces
        from olmo_cli.model.generate import check_cache_fits

        def run(on_text: Any) -> None:
            self.complete([prompt], settings, stop=stop, on_text=lambda _row, piece: on_text(piece))

        # checked now, so a request too large fails at the call rather than at the first piece
        check_cache_fits(self.config.model, len(prompt), 1, settings.max_new_tokens, self.dtype, self.device)
        return stream_pieces(run)

    # ---- scoring ----------------------------------------------------------------------------------

    def loglikelihood(
        self,
        context: str | Sequence[str],
        continuation: str | Sequence[str],
        *,
        batch_size: int = 32,
        max_length: int | None = None,
    ) -> Any:
        """log P(continuation | context) in nats, summed over the continuation's tokens, as `olmo eval`
        scores a choice: the two texts tokenized separately without special tokens, an empty context
        replaced by EOS, the input cut from the left to `max_length` tokens (default: the model's
        max_sequence_length). Lists of contexts and continuations (pairwise): a list of floats."""
        from olmo_cli.eval.downstream import encoder_for
        from olmo_cli.eval.formats import Doc
        from olmo_cli.eval.requests import build_requests
        from olmo_cli.eval.scoring import score_requests

        single = isinstance(context, str)
        if single != isinstance(continuation, str):
            raise UsageError("give a context and a continuation, or a list of each (of equal length)")
        contexts = [context] if isinstance(context, str) else list(context)
        continuations = [continuation] if isinstance(continuation, str) else list(continuation)
        if len(contexts) != len(continuations):
            raise UsageError(f"{len(contexts)} contexts but {len(continuations)} continuations")
        if not contexts:
            return []
        resolved = self.tokenizer.resolved
        docs = [Doc((c,), (x,), 0) for c, x in zip(contexts, continuations, strict=True)]
        requests = build_requests(
            docs,
            encoder_for(resolved),
            resolved.identity.eos_token_id,
            max_length or self.max_sequence_length,
        )
        scores = score_requests(
            self.torch_module,
            requests.requests,
            batch_size=batch_size,
            pad_token_id=resolved.identity.pad_token_id,
        )
        values = [float(v) for v in scores.loglikelihood]
        return values[0] if single else values

    def perplexity(
        self,
        data: str | Path | Sequence[str],
        *,
        seq_len: int | None = None,
        batch_size: int = 32,
        max_tokens: int | None = None,
    ) -> float:
        """Token-weighted perplexity, exp(summed NLL / predicted tokens), as `olmo eval --perplexity`
        reports it. `data`: a list of texts (each stripped, a document + EOS, as `olmo data tokenize`
        writes them, read as one stream), or a path `olmo eval --perplexity` takes (token files, a token
        directory, a glob, .jsonl/.txt text). The stream is cut into windows of `seq_len` tokens (default: the
        model's max_sequence_length); every token but a window's first is predicted."""
        from olmo_cli.eval.perplexity_sources import evaluate_source, token_byte_lengths

        source = self._source(data)
        if not any(len(stream) >= 2 for stream in source.streams):
            raise UsageError("the data holds fewer than 2 tokens: nothing to predict")
        result = evaluate_source(
            self.torch_module,
            source,
            token_byte_lengths(self.tokenizer.resolved, self.config.model.padded_vocab_size),
            seq_len=seq_len or self.max_sequence_length,
            batch_size=batch_size,
            max_tokens=max_tokens,
        )
        return result.perplexity

    def _source(self, data: str | Path | Sequence[str]) -> Any:
        import numpy as np

        from olmo_cli.eval.perplexity_sources import PplSource, open_source

        if isinstance(data, (str, Path)):
            return open_source(str(data), self.tokenizer.resolved, self.config.data.memmap_dtype)
        texts = list(data)
        if not all(isinstance(t, str) for t in texts):
            raise UsageError("perplexity takes a list of texts or a data path (a str or Path)")
        # Each text as `olmo data tokenize` makes a document of it: stripped, empty ones left out.
        docs = [self.tokenizer.encode(t.strip(), add_eos=True) for t in texts if t.strip()]
        stream = np.asarray([i for doc in docs for i in doc], dtype=np.int64)
        return PplSource("texts", "text", ["<texts>"], [stream])
