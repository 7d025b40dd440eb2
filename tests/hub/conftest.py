from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._http_server import Server, serve


@pytest.fixture
def server() -> Iterator[Server]:
    with serve() as s:
        yield s
