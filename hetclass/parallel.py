"""Work shared by threads with results in a fixed order (so sums never depend on the thread
count)."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Deque


def ordered_map(fn: Callable, items, threads: int):
    """``fn(*item)`` for each item of the iterable ``items``, yielded in order; computed by
    ``threads`` threads with at most ``threads + 1`` items taken from ``items`` and not yet
    yielded (``items`` is consumed in the calling thread)."""
    if threads <= 1:
        for item in items:
            yield fn(*item)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: Deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, *item))
                if len(pending) > threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def thread_map(fn: Callable, items, threads: int):
    """``fn(item)`` for each item, yielded in order (:func:`ordered_map` of one-argument
    calls): independent work, so the results do not depend on the thread count."""
    return ordered_map(fn, ((item,) for item in items), threads)
