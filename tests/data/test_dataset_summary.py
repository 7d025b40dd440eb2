"""The token-data summary behind `olmo data inspect`: counts, largest id, and the vocabulary check."""

from __future__ import annotations

import numpy as np
import pytest
from _token_data import write_token_dir, write_tokens

from olmo_cli.data import summary
from olmo_cli.data.summary import check_vocab, inspect_token_data
from olmo_cli.errors import DataError


def test_token_directory_summary_uses_the_manifest(tmp_path, monkeypatch):
    monkeypatch.setattr(summary, "SCAN_CHUNK_TOKENS", 7)  # several chunks per file
    parts = [np.array([5, 9, 0, 3, 3, 0, 4000, 0, 2, 0]), np.array([1, 2, 3, 0, 4, 0, 6])]
    directory = write_token_dir(tmp_path / "tok", parts, documents=[4, 2])
    seen: list[tuple[int, int]] = []
    result = inspect_token_data(
        [str(directory)], seq_len=4, vocab_size=4096, progress=lambda *a: seen.append(a)
    )
    assert (result.dtype, result.tokens, result.instances, result.dropped_tokens) == ("uint16", 17, 3, 5)
    assert (result.documents, result.documents_from) == (6, "manifest")
    assert result.max_token_id == 4000 and result.fits_vocab is True
    assert result.tokenizer == "builtin:tiny-bpe-4096" and result.eos_token_id == 0
    assert [(f.tokens, f.instances, f.documents, f.max_token_id) for f in result.files] == [
        (10, 2, 4, 4000),
        (7, 1, 2, 6),
    ]
    result.check_vocab()  # all ids below 4096: no error
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == 17 and all(t == 17 for _, t in seen)
    assert len(seen) == 2 + 1  # chunks of 7: [7, 3] and [7]


def test_raw_files_count_documents_from_eos(tmp_path):
    a = write_tokens(tmp_path / "a.npy", [7, 7, 99, 7, 99, 1, 2, 99], "uint32")
    b = write_tokens(tmp_path / "b.npy", [3, 70_000, 99], "uint32")
    result = inspect_token_data([str(a), str(b)], seq_len=2, dtype="uint32", eos_token_id=99)
    assert (result.documents, result.documents_from) == (4, "EOS count")
    assert result.max_token_id == 70_000 and result.instances == 4 + 1
    assert result.fits_vocab is None  # no vocabulary given, nothing checked
    unknown = inspect_token_data([str(a)], seq_len=2, dtype="uint32")
    assert (unknown.documents, unknown.documents_from) == (None, "unknown")


def test_ids_beyond_the_vocabulary_are_a_data_error(tmp_path):
    path = write_tokens(tmp_path / "a.npy", [1, 2, 50279, 3])
    result = inspect_token_data([str(path)], seq_len=2, vocab_size=50279)
    assert result.fits_vocab is False
    with pytest.raises(DataError, match="token id 50279, but the model's vocabulary has 50279 ids"):
        result.check_vocab()
    check_vocab(50279, 50280)  # the largest id just fits
    with pytest.raises(DataError, match=r"\(0\.\.99\)"):
        check_vocab(100, 100)


def test_empty_file_has_no_largest_id(tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    result = inspect_token_data([str(tmp_path / "empty.npy")], seq_len=4)
    assert (result.tokens, result.instances, result.max_token_id) == (0, 0, None)
