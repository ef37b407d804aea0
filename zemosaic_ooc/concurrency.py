"""A bounded, ordered thread map: results in input order, at most ``workers`` items in flight.

Used where each item holds a lot of memory (a whole master tile during ingest), so a plain
``ThreadPoolExecutor.map`` (which submits everything at once) would hold every result.
"""
from __future__ import annotations

import concurrent.futures as cf
from collections import deque
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[tuple[T, R | BaseException]]:
    """Yield ``(item, fn(item))`` in input order, or ``(item, exception)`` where ``fn`` raised.

    At most ``workers`` calls run or wait to be consumed at any time; with ``workers <= 1``
    everything runs in the caller's thread, one item at a time.
    """
    if workers <= 1:
        for item in items:
            try:
                yield item, fn(item)
            except Exception as exc:  # noqa: BLE001 - handed to the caller in order
                yield item, exc
        return
    with cf.ThreadPoolExecutor(max_workers=int(workers)) as pool:
        pending: deque[tuple[T, cf.Future]] = deque()
        source = iter(items)
        for item in source:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= workers:
                break
        while pending:
            item, future = pending.popleft()
            try:
                result: R | BaseException = future.result()
            except Exception as exc:  # noqa: BLE001
                result = exc
            for nxt in source:                     # refill one slot before handing back
                pending.append((nxt, pool.submit(fn, nxt)))
                break
            yield item, result
