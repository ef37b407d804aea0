"""Progress reporting: the pipeline reports stages and block counts to a sink.

The CLI plugs in a tqdm bar per stage; the API adapts it to ZeMosaic's
``progress_callback(message_key, fraction, level)``; the default does nothing.
"""
from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("zemosaic_ooc")


class ProgressSink(Protocol):
    def start(self, stage: str, total: int, unit: str = "block") -> None: ...
    def advance(self, stage: str, n: int = 1) -> None: ...
    def finish(self, stage: str) -> None: ...
    def message(self, text: str, level: str = "info") -> None: ...


class NullProgress:
    """Reports nothing except messages to the logger."""

    def start(self, stage: str, total: int, unit: str = "block") -> None:
        log.debug("stage %s: %d %s(s)", stage, total, unit)

    def advance(self, stage: str, n: int = 1) -> None:
        pass

    def finish(self, stage: str) -> None:
        log.debug("stage %s done", stage)

    def message(self, text: str, level: str = "info") -> None:
        getattr(log, "warning" if level == "warning" else "info")(text)
