"""zemosaic_ooc: out-of-core ZeMosaic Phase 5."""
__version__ = "0.1.0"

__all__ = ["run_phase5", "Phase5Result", "Phase5Options", "__version__"]


def __getattr__(name):
    # Lazy re-exports: ``import zemosaic_ooc`` stays light (the CLI's --help, --version).
    if name in ("run_phase5", "Phase5Result"):
        from . import api
        return getattr(api, name)
    if name == "Phase5Options":
        from .options import Phase5Options
        return Phase5Options
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
