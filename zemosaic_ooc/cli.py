"""The ``zemosaic-ooc`` command line: ``run``, ``resume``, ``demo`` and ``report``.

Exit codes: 0 success; 2 bad input, bad option or usage error (one line
``zemosaic-ooc: error: <message>`` on stderr); 1 an unexpected internal error
(a short hint, the full traceback with ``-v``); 130 interrupted.

The pipeline is imported lazily inside the commands, so ``--help`` and option
errors work even where the heavy modules are missing or broken.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .errors import InputError, OptionError, ZeMosaicOocError
from .options import Phase5Options, parse_option_value

PROG = "zemosaic-ooc"
log = logging.getLogger("zemosaic_ooc.cli")

from .options import parse_size as _options_parse_size
from .backend import GpuUnavailableError


# --------------------------------------------------------------------------- sizes

def parse_size(text: str | int) -> int:
    """Parse a memory size, with options.parse_size when it exists."""
    try:
        return int(_options_parse_size(text))
    except OptionError:
        raise
    except (TypeError, ValueError) as exc:
        raise OptionError(f"invalid size {text!r} ({exc})") from exc


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except OptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _pair_arg(name: str) -> Callable[[str], tuple[int, int]]:
    def parse(text: str) -> tuple[int, int]:
        match = re.fullmatch(r"\s*(\d+)\s*[xX×,]\s*(\d+)\s*", text)
        if not match or int(match.group(1)) <= 0 or int(match.group(2)) <= 0:
            raise argparse.ArgumentTypeError(f"{name} must look like 2x2, got {text!r}")
        return int(match.group(1)), int(match.group(2))
    return parse


# --------------------------------------------------------------------------- progress

class _TqdmLogHandler(logging.Handler):
    """Writes log records to stderr through tqdm.write, so bars are not torn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            try:
                from tqdm import tqdm
                tqdm.write(text, file=sys.stderr)
            except ImportError:  # pragma: no cover
                print(text, file=sys.stderr)
        except Exception:  # pragma: no cover - never let logging kill a run
            self.handleError(record)


class TqdmProgress:
    """A :class:`~zemosaic_ooc.progress.ProgressSink`: one tqdm bar per stage on stderr.

    Bars are shown when stderr is a terminal, or always with ``force=True``
    (``--progress``), never with ``enabled=False`` (``-q`` / ``--no-progress``).
    Messages go to the ``zemosaic_ooc`` logger, whose CLI handler writes them
    above the bars.  Safe to call from worker threads.
    """

    def __init__(self, *, enabled: bool = True, force: bool = False, stream: Any = None):
        self.stream = stream if stream is not None else sys.stderr
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.show = bool(enabled and (force or is_tty))
        self._bars: dict[str, Any] = {}
        self._lock = threading.Lock()

    def start(self, stage: str, total: int, unit: str = "block") -> None:
        with self._lock:
            old = self._bars.pop(stage, None)
            if old is not None:
                old.close()
            if not self.show:
                log.info("%s: %s %s(s)", stage, total, unit)
                self._bars[stage] = None
                return
            from tqdm import tqdm
            self._bars[stage] = tqdm(total=total if total else None, desc=stage, unit=unit,
                                     file=self.stream, leave=True, dynamic_ncols=True,
                                     disable=False)

    def advance(self, stage: str, n: int = 1) -> None:
        with self._lock:
            bar = self._bars.get(stage)
            if bar is not None:
                bar.update(n)

    def finish(self, stage: str) -> None:
        with self._lock:
            bar = self._bars.pop(stage, None)
            if bar is not None:
                if bar.total is not None and bar.n < bar.total:
                    bar.update(bar.total - bar.n)
                bar.close()
            else:
                log.debug("%s: done", stage)

    def message(self, text: str, level: str = "info") -> None:
        levelno = logging.getLevelName(str(level).upper())
        if not isinstance(levelno, int):
            levelno = logging.INFO
        logging.getLogger("zemosaic_ooc").log(levelno, "%s", text)

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                if bar is not None:
                    bar.close()
            self._bars.clear()


# --------------------------------------------------------------------------- options

def _parse_option_item(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise OptionError(f"--option expects KEY=VALUE, got {item!r}")
    return key, parse_option_value(value)


def build_options(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Phase5Options:
    """Phase5Options from ``--option KEY=VALUE`` items and the explicit flags (which win).

    Everything goes through :meth:`Phase5Options.from_mapping`, so ZeMosaic keys are applied
    before our own (an explicit ``--gpu`` wins over ``use_gpu_phase5``) and the cross-field
    checks run once at the end.
    """
    values: dict[str, Any] = {}
    for item in getattr(args, "option", None) or []:
        key, value = _parse_option_item(item)
        values.pop(key, None)  # a repeated key: the last one wins, in its new position
        values[key] = value
    for dest in ("gpu", "memory_budget", "gpu_memory_budget", "block_size", "scheduler",
                 "photometry", "grid"):
        value = getattr(args, dest, None)
        if value is not None:
            values.pop(dest, None)
            values[dest] = value
    for dest in ("skip_bad_tiles", "overwrite", "durable"):
        if getattr(args, dest, False):
            values.pop(dest, None)
            values[dest] = True
    for key, value in (extra or {}).items():
        values.pop(key, None)
        values[key] = value
    try:
        return Phase5Options.from_mapping(values)
    except OptionError:
        raise
    except (TypeError, ValueError) as exc:
        raise OptionError(str(exc)) from exc


def _expand_tiles(items: Sequence[str]) -> list[Path]:
    """Paths as given; an unexpanded glob pattern (e.g. from a Windows shell) is expanded."""
    paths: list[Path] = []
    for item in items:
        if not os.path.exists(item) and glob.has_magic(item):
            matches = sorted(glob.glob(item))
            if matches:
                paths.extend(Path(m) for m in matches)
                continue
        paths.append(Path(item))
    return paths


def _print_summary(summary: Any, args: argparse.Namespace) -> None:
    if _verbosity(args) < 0:
        return
    text = summary.format() if hasattr(summary, "format") else str(summary)
    print(text, flush=True)


# --------------------------------------------------------------------------- commands

def _run_pipeline(tiles: Sequence[Path], output: Path, options: Phase5Options,
                  args: argparse.Namespace, *, fits_path: Path | None,
                  preview_path: Path | None) -> Any:
    from .phase5.pipeline import run_pipeline  # lazy: the CLI imports without it

    progress = TqdmProgress(enabled=not args.no_progress and _verbosity(args) >= 0,
                            force=args.progress)
    try:
        return run_pipeline(list(tiles), output, options, fits_path=fits_path,
                            preview_path=preview_path, progress=progress)
    finally:
        progress.close()


def cmd_run(args: argparse.Namespace) -> int:
    options = build_options(args)
    tiles = _expand_tiles(args.tiles)
    if not tiles:
        raise InputError(None, "no input tiles were given (pass one or more master-tile FITS files)")
    summary = _run_pipeline(tiles, Path(args.output), options, args,
                            fits_path=Path(args.fits) if args.fits else None,
                            preview_path=Path(args.preview) if args.preview else None)
    _print_summary(summary, args)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from .phase5.pipeline import resume_pipeline  # lazy

    progress = TqdmProgress(enabled=not getattr(args, "no_progress", False) and _verbosity(args) >= 0,
                            force=getattr(args, "progress", False))
    try:
        summary = resume_pipeline(Path(args.store), progress=progress,
                                  fits_path=Path(args.fits) if args.fits else None,
                                  preview_path=Path(args.preview) if args.preview else None)
    finally:
        progress.close()
    _print_summary(summary, args)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    # the demo owns DIR/demo.*: a second run replaces them
    options = build_options(args, extra=None if args.no_run else {"overwrite": True})
    from .demo import make_demo_tiles  # lazy

    out_dir = Path(args.dir)
    tiles_dir = out_dir / "tiles"
    tiles_dir.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"seed": args.seed}
    if args.tiles is not None:
        kwargs["nx"], kwargs["ny"] = args.tiles
    if args.tile_size is not None:
        kwargs["tile_hw"] = args.tile_size
    tiles = [Path(p) for p in make_demo_tiles(tiles_dir, **kwargs)]
    quiet = _verbosity(args) < 0
    if not quiet:
        print(f"demo: wrote {len(tiles)} synthetic master tiles to {tiles_dir}", flush=True)
    if args.no_run:
        if not quiet:
            joined = " ".join(str(t) for t in tiles)
            print(f"run them with:\n  {PROG} run {joined} -o {out_dir / 'demo.zarr'}", flush=True)
        return 0
    summary = _run_pipeline(tiles, out_dir / "demo.zarr", options, args,
                            fits_path=out_dir / "demo.fits", preview_path=out_dir / "demo.png")
    _print_summary(summary, args)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.build import build_report  # lazy: matplotlib only for this command

    if not args.seam_threshold > 0:
        raise OptionError(f"--seam-threshold must be > 0, got {args.seam_threshold}")
    result = build_report(Path(args.store), Path(args.output) if args.output else None,
                          max_side=max(16, args.max_side), rel_threshold=args.seam_threshold / 100.0,
                          compare_modes=bool(args.compare_modes))
    if _verbosity(args) >= 0:
        print(result.format(), flush=True)
    return 0


def _common_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("execution")
    g.add_argument("--memory-budget", type=_size_arg, metavar="SIZE",
                   help="host memory the run may use, e.g. 2GiB (default 2GiB); block size and "
                        "resident tile regions are derived from it")
    g.add_argument("--block-size", type=_positive_int, metavar="N",
                   help="output block (chunk) edge in pixels; overrides the size derived from "
                        "--memory-budget")
    g.add_argument("--gpu", choices=("auto", "on", "off"),
                   help="auto: the GPU when cupy and a CUDA device are usable (default); on: "
                        "require it (exit 2 if absent); off: CPU only. The GPU changes speed, "
                        "never the photometry")
    g.add_argument("--gpu-memory-budget", type=_size_arg, metavar="SIZE",
                   help="VRAM the run may use (default: a share of the free VRAM)")
    g.add_argument("--scheduler", metavar="NAME",
                   help="where block tasks run: 'local' (in-process thread pool, default)")
    g.add_argument("--photometry", choices=("zemosaic", "corrected"),
                   help="'zemosaic': ZeMosaic's CPU photometry (default); 'corrected': the opt-in "
                        "corrected mode")
    g.add_argument("--durable", action="store_true",
                   help="flush every written block to disk before marking it done")
    g.add_argument("--option", action="append", metavar="KEY=VALUE", default=[],
                   help="any Phase 5 option by its ZeMosaic key (or ours); VALUE is JSON, falling "
                        "back to a string, e.g. --option two_pass_coverage_renorm=false. Repeatable")
    o = p.add_argument_group("output and logging")
    o.add_argument("--progress", action="store_true",
                   help="show progress bars even when stderr is not a terminal")
    o.add_argument("--no-progress", action="store_true", help="never show progress bars")
    o.add_argument("-v", "--verbose", action="count", default=0,
                   help="more messages (-vv: debug; also shows full tracebacks)")
    o.add_argument("-q", "--quiet", action="count", default=0,
                   help="errors only: no progress bars, no summary")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Out-of-core ZeMosaic Phase 5 (Reproject & Coadd): master tiles -> one RGB "
                    "mosaic, block by block on Zarr stores, on the CPU or a GPU with the same "
                    "photometry.",
        epilog="examples:\n"
               f"  {PROG} demo demo_out\n"
               f"  {PROG} run tiles/*.fits -o mosaic.zarr --fits mosaic.fits --preview mosaic.png "
               "--memory-budget 4GiB\n\n"
               "exit codes: 0 ok, 2 bad input / option / usage, 1 internal error, 130 interrupted")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", dest="verbose_top", action="count", default=0,
                        help=argparse.SUPPRESS)
    parser.add_argument("-q", "--quiet", dest="quiet_top", action="count", default=0,
                        help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    common = _common_flags()

    run = sub.add_parser(
        "run", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run Phase 5 on master tiles into a Zarr store (and optional FITS / PNG)",
        description="Run Phase 5 on master-tile FITS files (CHW, HWC or mono, each with a "
                    "celestial WCS, optional ALPHA extension) into a Zarr mosaic store.\n"
                    "Until two-pass renormalisation and the patchwork suppressor exist, a run "
                    "performs the first pass only and its summary says so.")
    run.add_argument("tiles", nargs="*", metavar="TILE.fits", help="master tiles, in order")
    run.add_argument("-o", "--output", required=True, metavar="OUT.zarr",
                     help="the output Zarr store (must not exist unless --overwrite)")
    run.add_argument("--fits", metavar="F.fits",
                     help="also export a FITS file: primary (3,H,W) float32 with the output WCS, "
                          "COVERAGE and ALPHA extensions")
    run.add_argument("--preview", metavar="P.png", help="also write a stretched PNG preview")
    run.add_argument("--grid", metavar="HEADER.fits",
                     help="take the output grid from this FITS header instead of computing it")
    run.add_argument("--skip-bad-tiles", action="store_true",
                     help="skip unreadable / WCS-less tiles with a warning (as ZeMosaic does) "
                          "instead of stopping with exit code 2")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an existing output store / files")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser(
        "demo", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="make a synthetic tile set and run it",
        description="Make a synthetic master-tile set (stars, nebulosity, per-tile per-channel "
                    "gains and offsets, soft alpha edges, SIP distortion) in DIR/tiles and run "
                    "it into DIR/demo.zarr, DIR/demo.fits and DIR/demo.png (replacing them).")
    demo.add_argument("dir", nargs="?", default="zemosaic_demo", metavar="DIR",
                      help="output folder (default: ./zemosaic_demo)")
    demo.add_argument("--tiles", type=_pair_arg("--tiles"), metavar="NXxNY",
                      help="tile grid, e.g. 2x2 (default 2x2)")
    demo.add_argument("--tile-size", type=_pair_arg("--tile-size"), metavar="HxW",
                      help="tile size in pixels, height x width, e.g. 512x544")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--no-run", action="store_true",
                      help="only write the tiles and print the command that runs them")
    demo.set_defaults(func=cmd_demo)

    resume = sub.add_parser(
        "resume", help="continue an interrupted run (done blocks are skipped)",
        description="Continue a run that stopped (crash, kill, power loss) with the options and "
                    "tiles recorded in its store: finished stages and blocks are skipped, a "
                    "damaged chunk (checksum) is recomputed, orphan *.partial files are removed.")
    resume.add_argument("store", metavar="OUT.zarr")
    resume.add_argument("--fits", metavar="F.fits", help="also export a FITS file at the end")
    resume.add_argument("--preview", metavar="P.png", help="also write a PNG preview at the end")
    resume.add_argument("--progress", action="store_true", help="show progress bars off a terminal")
    resume.add_argument("--no-progress", action="store_true", help="never show progress bars")
    resume.add_argument("-v", "--verbose", action="count", default=0, help=argparse.SUPPRESS)
    resume.add_argument("-q", "--quiet", action="count", default=0, help=argparse.SUPPRESS)
    resume.set_defaults(func=cmd_resume)

    report = sub.add_parser(
        "report", help="HTML report with pictures of a finished store",
        description="Write one self-contained HTML page about a finished mosaic store (PNG "
                    "pictures embedded, and also written beside it): stretched previews with "
                    "tile outlines, coverage and alpha maps, per-tile gains and offsets, the "
                    "block map from the run journal, a seam check of every tile boundary and "
                    "the run facts. Built from the store alone, in bounded memory.")
    report.add_argument("store", metavar="OUT.zarr")
    report.add_argument("-o", "--output", metavar="REPORT.html",
                        help="the HTML file (default: OUT_report.html beside the store); the "
                             "PNGs go beside it as REPORT_<name>.png")
    report.add_argument("--max-side", type=_positive_int, default=1024, metavar="N",
                        help="longest side of the pictures in pixels (default 1024)")
    report.add_argument("--seam-threshold", type=float, default=2.5, metavar="PCT",
                        help="flag a tile boundary whose step exceeds PCT %% of the channel's "
                             "P99 - P1 range (default 2.5)")
    report.add_argument("--compare-modes", action="store_true",
                        help="also run the same request in the other photometry mode (zemosaic / "
                             "corrected; reads the input tiles again) and show both seam checks")
    report.add_argument("-v", "--verbose", action="count", default=0, help=argparse.SUPPRESS)
    report.add_argument("-q", "--quiet", action="count", default=0, help=argparse.SUPPRESS)
    report.set_defaults(func=cmd_report)
    return parser


# --------------------------------------------------------------------------- main

def _verbosity(args: argparse.Namespace) -> int:
    return (getattr(args, "verbose", 0) + getattr(args, "verbose_top", 0)
            - getattr(args, "quiet", 0) - getattr(args, "quiet_top", 0))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error(message: str) -> None:
    try:
        print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)
    except Exception:  # pragma: no cover - stderr closed
        pass


def _internal_error(exc: BaseException, verbosity: int) -> None:
    if verbosity >= 1:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        print(f"  at {last.filename}:{last.lineno} in {last.name}", file=sys.stderr)
    if isinstance(exc, MemoryError):
        print("  out of memory: try a smaller --memory-budget or --block-size", file=sys.stderr)
    if verbosity < 1:
        print("  this is a bug; run again with -v for the full traceback and report it",
              file=sys.stderr)
    sys.stderr.flush()


class _LowerLevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = record.levelname.lower()
        return super().format(record)


def _install_logging(verbosity: int) -> Callable[[], None]:
    logger = logging.getLogger("zemosaic_ooc")
    old_level, old_propagate = logger.level, logger.propagate
    handler = _TqdmLogHandler()
    handler.setFormatter(_LowerLevelFormatter(f"{PROG}: %(levelname)s: %(message)s"))
    level = (logging.ERROR if verbosity < 0 else logging.WARNING if verbosity == 0
             else logging.INFO if verbosity == 1 else logging.DEBUG)
    logger.setLevel(level)
    logger.addHandler(handler)
    logger.propagate = False

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
    return restore


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``zemosaic-ooc``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # usage errors (2), --help / --version (0)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    verbosity = _verbosity(args)
    restore_logging = _install_logging(verbosity)
    try:
        return int(args.func(args) or 0)
    except ZeMosaicOocError as exc:
        _error(str(exc))
        return int(getattr(exc, "exit_code", 2) or 2)
    except GpuUnavailableError as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        return 0
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        _internal_error(exc, verbosity)
        return 1
    finally:
        restore_logging()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
