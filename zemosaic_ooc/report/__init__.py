"""``zemosaic-ooc report``: an HTML page with pictures of what Phase 5 did, from the store alone."""
from __future__ import annotations

__all__ = ["build_report", "ReportResult", "SeamResult", "default_html_path"]


def __getattr__(name):
    # lazy: importing the package does not pull in matplotlib
    if name in ("build_report", "ReportResult", "default_html_path"):
        from . import build
        return getattr(build, name)
    if name == "SeamResult":
        from .seams import SeamResult
        return SeamResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
