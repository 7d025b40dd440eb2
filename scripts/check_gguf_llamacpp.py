"""Run our GGUF export in llama.cpp (through llama-cpp-python) and compare its greedy continuation with ours.

For each GGUF type the checkpoint is exported as `olmo quantize --gguf TYPE` does, loaded with
`llama_cpp.Llama`, and both sides continue the same prompt greedily from the same token ids (ours: the
fp32 model with `generate_ids`). Also checks that llama.cpp tokenizes the prompt to the ids our tokenizer
gives (the exported vocabulary, merges and pre-tokenizer at work). Exits 1 unless every type matches
ours for at least --must-match tokens. OLMo 1 checkpoints export as llama.cpp's `olmo` architecture,
OLMo 2 ones (e.g. a run of the olmo2-tiny preset, or an OLMo 2 Hugging Face directory) as `olmo2`, with
the "dbrx" pre-tokenizer for OLMo 2's dolma2 tokenizer.

Outside CI: llama-cpp-python compiles llama.cpp on install (minutes to tens of minutes).

    pip install llama-cpp-python      # CMAKE_ARGS="-DGGML_NATIVE=ON" for a build tuned to this CPU
    python scripts/check_gguf_llamacpp.py runs/olmo-tiny [--types f16 q8_0 q4_0] [--tokens 16]
    python scripts/check_gguf_llamacpp.py runs/olmo2-tiny

llama.cpp repacks q8_0/q4_0 weights for Intel AMX on CPUs that have it (Sapphire Rapids and later), and
that path crashed (segfault in the first matmul) on such a machine, for files from llama.cpp's own
convert_hf_to_gguf.py as well (ggml-org/llama.cpp#20824). The repacking is therefore off here unless
--extra-buffers is given; it changes nothing but speed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from olmo_cli.load.build import load_model, load_tokenizer  # noqa: E402
from olmo_cli.load.read import read_checkpoint  # noqa: E402
from olmo_cli.model.generate import GenerationSettings, generate_ids  # noqa: E402
from olmo_cli.quant.gguf_export import write_gguf  # noqa: E402

DEFAULT_PROMPT = "def main():\n    parser = argparse."


def open_llama(path: Path, n_ctx: int, extra_buffers: bool):
    import llama_cpp
    import llama_cpp.llama as llama_module

    if not extra_buffers:  # see the module doc: the AMX repack path crashes on some CPUs
        defaults = llama_cpp.llama_model_default_params

        def params():
            p = defaults()
            p.use_extra_bufts = False
            return p

        llama_module.llama_cpp.llama_model_default_params = params
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, verbose=False, seed=0)


def llama_greedy(llm, prompt: list[int], tokens: int) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    for _ in range(tokens):
        token = llm.sample(temp=0.0, top_k=1)
        out.append(int(token))
        llm.eval([token])
    return out


def first_mismatch(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="a full-precision checkpoint (or run folder)")
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_0"])
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--tokens", type=int, default=16, help="tokens to continue greedily")
    parser.add_argument("--must-match", type=int, default=8, help="leading tokens that must agree")
    parser.add_argument("--extra-buffers", action="store_true", help="let llama.cpp repack for AMX")
    args = parser.parse_args()
    found = read_checkpoint(args.checkpoint)
    tokenizer = load_tokenizer(found)
    prompt = tokenizer.encode(args.prompt, add_special_tokens=False)
    settings = GenerationSettings(max_new_tokens=args.tokens, eos_token_id=None)
    ours = generate_ids(load_model(found), [prompt], settings)[0].token_ids
    print(f"prompt {args.prompt!r} -> {len(prompt)} tokens; ours (fp32): {ours}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for file_type in args.types:
            path = write_gguf(
                found, tokenizer, Path(tmp) / f"model-{file_type}.gguf", file_type=file_type
            ).path
            llm = open_llama(path, found.config.model.max_sequence_length, args.extra_buffers)
            same_ids = llm.tokenize(args.prompt.encode("utf-8"), add_bos=False, special=False) == prompt
            theirs = llama_greedy(llm, prompt, args.tokens)
            llm.close()
            agree = first_mismatch(ours, theirs)
            passed = same_ids and agree >= min(args.must_match, args.tokens)
            ok &= passed
            tokenized = "same" if same_ids else "DIFFERENT"
            print(
                f"{file_type:>5}: {path.stat().st_size:>10,} bytes  tokenizer {tokenized}  "
                f"greedy agrees for {agree}/{args.tokens} tokens  {'ok' if passed else 'FAIL'}  {theirs}"
            )
    print("llama.cpp matches ours" if ok else "llama.cpp does NOT match ours")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
