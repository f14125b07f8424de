"""Stages of a loop on threads of their own, joined by bounded queues, so that decoding, inference and scoring
of consecutive frames overlap (each releases the GIL for its heavy part: image decoding, the runtime, numpy).

    for item in ahead(map(infer, ahead(decoded_frames(), depth=4)), depth=4):
        score(item)

Each stage still handles its items one at a time in order, so the results are those of the plain loop.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import closing, nullcontext
from typing import TypeVar

T = TypeVar("T")
_END = object()


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def ahead(items: Iterator[T], depth: int) -> Iterator[T]:
    """`items`, produced on a thread of their own at most `depth` items ahead of the consumer; an exception raised
    while producing is raised here, in its place. Closing this generator stops and joins the producer."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with closing(items) if hasattr(items, "close") else nullcontext():
                for item in items:
                    if not put(item):
                        return
        except BaseException as error:  # noqa: BLE001 -- handed to the consumer, which raises it
            put(_Raised(error))
            return
        put(_END)

    thread = threading.Thread(target=produce, name="evaluation-stage", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()

