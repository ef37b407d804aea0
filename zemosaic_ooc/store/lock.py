"""One run per store: a lock file beside the output store (``OUT.zarr.lock``) holding the owner's pid.

A second run on the same store gets a clear error; a stale lock whose process is
gone is taken over with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from ..errors import StoreError

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, store_path: str | Path):
        store_path = Path(store_path)
        self.path = store_path.with_name(store_path.name + ".lock")
        self.store_path = store_path
        self.held = False

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except (NotADirectoryError, FileNotFoundError, PermissionError) as exc:
                raise StoreError(f"{self.store_path}: output folder {self.path.parent} is not a "
                                 f"writable folder ({exc.strerror})") from exc
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    owner = {}
                pid = int(owner.get("pid", -1))
                if owner.get("host") == me["host"] and pid > 0 and _alive(pid) and pid != me["pid"]:
                    raise StoreError(f"{self.store_path}: another run (pid {pid}) is using this store; "
                                     f"wait for it to finish (lock file {self.path})")
                log.warning("%s: taking over a stale lock left by pid %s", self.store_path, pid)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return self
        raise StoreError(f"{self.store_path}: cannot take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
