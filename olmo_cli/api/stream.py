"""A generation that reports text through a callback, turned into an iterator of text pieces.

The generation runs in a worker thread and hands each piece over through a queue. Leaving the loop early
(`break`, or closing the iterator) stops the generation at its next piece; an error in it is raised in
the caller's thread, where the next piece was asked for.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["stream_pieces"]

OnText = Callable[[str], None]


class _Cancelled(Exception):
    """Raised inside the worker by the callback once the consumer has gone."""


@dataclass
class _Failed:
    error: BaseException


_DONE = object()


def stream_pieces(run: Callable[[OnText], object]) -> Iterator[str]:
    """Calls `run(on_text)` in a worker thread once the iterator is first advanced; yields what it
    passes to `on_text`."""
    pieces: queue.Queue[object] = queue.Queue()
    cancelled = threading.Event()

    def on_text(piece: str) -> None:
        if cancelled.is_set():
            raise _Cancelled
        pieces.put(piece)

    def work() -> None:
        try:
            run(on_text)
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the consumer's thread and raised there
            pieces.put(_Failed(e))
            return
        pieces.put(_DONE)

    def iterate() -> Iterator[str]:
        worker = threading.Thread(target=work, name="olmo-generate", daemon=True)
        worker.start()
        try:
            while True:
                item = pieces.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failed):
                    raise item.error
                assert isinstance(item, str)
                yield item
            worker.join()
        finally:
            cancelled.set()

    return iterate()
