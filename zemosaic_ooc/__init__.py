"""zemosaic_ooc: out-of-core ZeMosaic Phase 5."""
__version__ = "0.1.0"
