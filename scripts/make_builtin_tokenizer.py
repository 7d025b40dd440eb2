"""Train the built-in tokenizer `builtin:tiny-bpe-4096` (the tiny preset's) and write it into the package.

A byte-level BPE like GPT-NeoX's (so any text encodes, no unknown tokens) with 4096 tokens:
id 0 `<|endoftext|>` (the preset's eos_token_id), id 1 `<|padding|>` (pad_token_id), then the 256 byte
symbols and 3838 merges learned from the default corpus (olmo_cli/data/corpus.py).

    python scripts/make_builtin_tokenizer.py            # write olmo_cli/data/builtin/tiny-bpe-4096.json
    python scripts/make_builtin_tokenizer.py --check    # exit 1 if the committed file differs

The corpus comes from the installed Python's standard library, so the result depends on the Python
version; the version used is recorded below and the committed file was made with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from olmo_cli.data.corpus import corpus_version, default_corpus_documents  # noqa: E402

OUTPUT = ROOT / "olmo_cli" / "data" / "builtin" / "tiny-bpe-4096.json"
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|endoftext|>", "<|padding|>"]  # ids 0 and 1, in this order
MADE_WITH = "python-stdlib/CPython-3.11.7"  # corpus_version() of the committed file


def build() -> str:
    """The tokenizer JSON, as the committed file holds it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    # As GPT-NeoX: NFC, byte-level pre-tokenization without a prefix space, byte-level decoding.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte has a token: nothing is unknown
        show_progress=False,
    )
    tokenizer.train_from_iterator((doc.text for doc in default_corpus_documents()), trainer=trainer)
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        sys.exit(f"trained {tokenizer.get_vocab_size()} tokens, not {VOCAB_SIZE}: the corpus is too small")
    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == token_id, (token, tokenizer.token_to_id(token))
    data = json.loads(tokenizer.to_str())
    # tokenizers >= 0.20 writes merges as pairs, which 0.19 (our lower bound, and what the Dolma toolkit
    # pins) cannot read; the older "a b" strings are read by every version. Byte-level tokens never hold
    # a plain space (it is "Ġ"), so the joined form is unambiguous.
    merges = data["model"]["merges"]
    assert all(" " not in part for pair in merges for part in pair)
    data["model"]["merges"] = [pair if isinstance(pair, str) else " ".join(pair) for pair in merges]
    # Compact JSON keeps the file small; sort_keys keeps it the same from run to run.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare with the committed file, write nothing")
    args = parser.parse_args()
    if corpus_version() != MADE_WITH:
        print(
            f"note: this Python's corpus is {corpus_version()}; the committed file was made from {MADE_WITH}"
        )
    text = build() + "\n"
    if args.check:
        same = OUTPUT.is_file() and OUTPUT.read_text(encoding="utf-8") == text
        print(f"{OUTPUT.relative_to(ROOT)} is {'up to date' if same else 'OUT OF DATE'}")
        return 0 if same else 1
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({OUTPUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
