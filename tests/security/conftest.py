"""Fixtures of the trust-boundary tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security._checkpoints import cached_run


@pytest.fixture(scope="session")
def trained_factory(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trained")


@pytest.fixture
def checkpoint(trained_factory, tmp_path) -> Path:
    """A fresh copy, in `tmp_path/run`, of a small run trained once per session: its unsharded
    checkpoint at step 2 (tests forge its files freely)."""
    return cached_run(trained_factory, tmp_path)
