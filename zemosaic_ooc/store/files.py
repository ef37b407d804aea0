"""Files written whole or not at all: a temporary ``.partial`` file renamed over the target."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def written_atomically(final: Path, *, unique: bool = False) -> Iterator[Path]:
    """Yield a ``.partial`` path beside ``final`` to write; it replaces ``final`` on success and
    is removed on failure (a reader sees the old file or the new one, never half of one).

    ``unique`` names it ``<final>.<random>.partial``, for targets that several threads may write
    at once; else ``<final>.partial``.  A resumed run removes orphaned ``*.partial`` files."""
    final = Path(final)
    partial = final.with_name(f"{final.name}.{uuid.uuid4().hex}.partial" if unique
                              else f"{final.name}.partial")
    try:
        yield partial
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
