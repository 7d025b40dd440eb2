"""The default corpus: read (never imported) from the standard library, in a fixed order, big enough for
the tiny model (its split and token cache are tested in test_default_corpus.py)."""

from __future__ import annotations

import textwrap

import pytest

from olmo_cli.data.corpus import default_corpus_documents


@pytest.fixture
def fake_stdlib(tmp_path):
    """A small stand-in for the standard library, with the parts the corpus leaves out."""
    root = tmp_path / "lib"
    files = {
        "zeta.py": '"""Zeta module."""\n\ndef f(a, b=1):\n    """Add things."""\n    return a + b\n',
        "alpha/__init__.py": '"""Alpha package."""\n',
        # Reading must not run the code: importing this would exit the test run.
        "alpha/boom.py": '"""Boom."""\nraise SystemExit("imported!")\n\nclass K(Base):\n    """A class."""\n'
        '    async def m(self):\n        """A method."""\n',
        "pydoc_data/topics.py": "topics = {'b': 'Second topic.\\n', 'a': 'First topic.'}\n",
        "test/test_x.py": '"""A test module."""\n',
        "site-packages/pkg.py": '"""Installed, not standard."""\n',
        "tkinter/__init__.py": '"""Optional on some systems."""\n',
        "broken.py": "def (:\n",
        "encodings/cp0.py": '"""Codec tables."""\ntable = "0x00 0x01"\n',
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_documents_in_fixed_order_without_left_out_parts(fake_stdlib):
    docs = list(default_corpus_documents(fake_stdlib))
    assert [d.id for d in docs] == [
        "python-reference:a",
        "python-reference:b",
        "stdlib-docs:alpha",
        "stdlib-docs:alpha.boom",
        "stdlib-docs:encodings.cp0",
        "stdlib-docs:zeta",
        "stdlib-source:alpha",
        "stdlib-source:alpha.boom",
        "stdlib-source:zeta",
    ]
    by_id = {d.id: d.text for d in docs}
    assert by_id["python-reference:b"] == "Second topic."
    assert by_id["stdlib-docs:zeta"] == "module zeta\n\nZeta module.\n\ndef f(a, b=1)\n\nAdd things."
    assert by_id["stdlib-docs:alpha.boom"] == textwrap.dedent(
        """\
        module alpha.boom

        Boom.

        class K(Base)

        A class.

        async def K.m(self)

        A method."""
    )
    assert by_id["stdlib-source:zeta"] == (fake_stdlib / "zeta.py").read_text()


def test_real_standard_library_gives_megabytes_of_text():
    docs = list(default_corpus_documents())
    size = sum(len(d.text.encode("utf-8")) for d in docs)
    # The tiny preset trains 300 steps of 32 x 256 tokens (2.5M); at ~3.5 bytes per token that needs
    # about 9 MB to see little repetition.
    assert size > 8_000_000, size
    assert len(docs) > 500
    ids = [d.id for d in docs]
    assert len(set(ids)) == len(ids)
    assert not any(i.startswith(("stdlib-docs:test.", "stdlib-source:test.")) for i in ids)
