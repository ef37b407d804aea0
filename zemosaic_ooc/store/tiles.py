"""TileStore: master tiles (FITS) ingested into a chunked Zarr group.

Layout (ACCEPTANCE §6): each tile ``tiles/<i>/data`` is (C, H, W) float32 in
native byte order, C = 3 (R, G, B; mono input is copied into three identical
planes), chunked for region reads; ``tiles/<i>/alpha`` (H, W) keeps the ALPHA
extension's **raw dtype** (§2.2 and §5.3 read float and uint8 alphas
differently).  The group attribute ``tiles`` holds one record per tile: the
whole primary header (WCS with SIP, frame counts, ZMT_* keys), the source file,
its checksum and a few scalars derived from the full-resolution arrays.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import zarr
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..errors import InputError

log = logging.getLogger(__name__)

FRAME_COUNT_KEYS = ("MT_NFRAMES", "ZMT_NALGN", "ZMT_NRAW", "NRAWPROC", "NRAWINIT")
TILE_CHUNK = 512


@dataclass
class TileRecord:
    """What the plan needs to know about one ingested tile (JSON-serialisable)."""

    index: int
    source: str
    tile_id: str
    shape_hw: tuple[int, int]
    header: str                      # the whole primary header, FITS card text
    n_channels_in: int               # 3, or 1 for mono input copied to RGB
    has_alpha: bool
    alpha_dtype: str | None
    alpha_max: float | None          # max of the finite raw ALPHA values (§2.2)
    alpha_usable: bool               # ALPHA present with the data's shape
    nframes_raw: float               # §0.3 frame count (1.0 when absent)
    empty_flag: bool                 # ZMT_EMPT set (§5.3 step 1)
    checksum: str
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    def wcs(self) -> WCS:
        """A fresh (unshared) celestial WCS with SIP, pixel_shape = (W, H)."""
        return header_wcs(fits.Header.fromstring(self.header))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape_hw"] = list(self.shape_hw)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TileRecord":
        d = dict(d)
        d["shape_hw"] = tuple(d["shape_hw"])
        return cls(**d)


def header_wcs(header: fits.Header) -> WCS:
    """The tile WCS as ZeMosaic reads it: ``WCS(header, naxis=2, relax=True)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, naxis=2, relax=True)
    if "NAXIS1" in header and "NAXIS2" in header:
        wcs.pixel_shape = (int(header["NAXIS1"]), int(header["NAXIS2"]))
    return wcs


def frame_count(header: fits.Header) -> float:
    """§0.3: the first frame-count key that parses to a finite value > 0, else 1."""
    for key in FRAME_COUNT_KEYS:
        if key in header:
            try:
                value = float(header[key])
            except (TypeError, ValueError):
                continue
            if math.isfinite(value) and value > 0:
                return value
    return 1.0


def tile_identifier(header: fits.Header, index: int) -> str:
    """§0.3 tile identity: ZMT_SUPID, else tile:<ZMT_ID>, else tile:%04d."""
    supid = header.get("ZMT_SUPID")
    if supid not in (None, ""):
        return str(supid)
    zmt_id = header.get("ZMT_ID")
    if zmt_id is not None:
        try:
            return f"tile:{int(zmt_id)}"
        except (TypeError, ValueError):
            pass
    return f"tile:{index:04d}"


def _file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _as_chw(data: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    """§0.3 layout rule, returning (C, H, W) float32 and the input channel count."""
    if data.ndim == 2:
        return np.broadcast_to(data, (3,) + data.shape), 1
    if data.ndim != 3:
        raise InputError(path, f"primary data has {data.ndim} dimensions; expected a 2-D mono "
                               "image or a 3-D RGB image (3, H, W) or (H, W, 3)")
    if data.shape[0] in (1, 3) and data.shape[-1] != data.shape[0]:
        chw = data
    else:
        chw = np.moveaxis(data, -1, 0)
    n_channels = chw.shape[0]
    if n_channels == 1:
        return np.broadcast_to(chw, (3,) + chw.shape[1:]), 1
    if n_channels != 3:
        raise InputError(path, f"primary data has {n_channels} channels (shape {data.shape}); "
                               "expected 3 (RGB) or 1 (mono)")
    return chw, 3


def read_tile_fits(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, fits.Header, int]:
    """Read one master tile: (C, H, W) float32 native, raw ALPHA or None, header, input channels.

    Raises :class:`InputError` naming the file for anything unusable.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, not a FITS file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=True) as hdul:
                hdul.verify("silentfix")
                primary = hdul[0]
                header = primary.header.copy()
                data = primary.data
                alpha = None
                if "ALPHA" in hdul:
                    alpha_data = hdul["ALPHA"].data
                    if alpha_data is not None:
                        alpha = np.array(alpha_data, dtype=alpha_data.dtype.newbyteorder("="))
                if data is None or data.size == 0:
                    raise InputError(path, "primary HDU has no image data")
                if not np.issubdtype(data.dtype, np.number):
                    raise InputError(path, f"primary data has non-numeric dtype {data.dtype}")
                view, n_in = _as_chw(data, path)
                # one native float32 copy, made while the file is open (no intermediate copies)
                chw = np.ascontiguousarray(view, dtype=np.float32)
                del view, data
    except InputError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        problem = "truncated or corrupt FITS" if "reshape" in str(exc) or "truncat" in str(exc).lower() \
            else "cannot be read as FITS"
        raise InputError(path, f"{problem} ({exc.__class__.__name__}: {exc})") from exc
    return chw, alpha, header, n_in


def validate_wcs(header: fits.Header, path: Path) -> WCS:
    """A celestial 2-D WCS or :class:`InputError`."""
    try:
        wcs = header_wcs(header)
    except Exception as exc:  # astropy raises many kinds here
        raise InputError(path, f"WCS cannot be parsed ({exc})") from exc
    if not wcs.has_celestial or wcs.naxis < 2:
        raise InputError(path, "no celestial WCS in the primary header (need RA/DEC CTYPEs, "
                               "CRVAL, CRPIX and CD or CDELT)")
    try:
        matrix = wcs.pixel_scale_matrix
        if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) == 0.0:
            raise InputError(path, "WCS pixel matrix is singular or not finite")
        center = wcs.all_pix2world([[0.0, 0.0]], 0)
        if not np.all(np.isfinite(center)):
            raise InputError(path, "WCS does not map pixels to finite sky positions")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"WCS is unusable ({exc})") from exc
    return wcs


class TileStore:
    """A Zarr group of ingested master tiles.  Thread-safe for concurrent reads."""

    def __init__(self, path: str | Path, group: zarr.Group, records: list[TileRecord]):
        self.path = Path(path)
        self.group = group
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def open(cls, path: str | Path) -> "TileStore":
        group = zarr.open_group(str(path), mode="r")
        records = [TileRecord.from_json(d) for d in group.attrs["tiles"]]
        return cls(path, group, records)

    def data(self, index: int) -> zarr.Array:
        """The (C, H, W) float32 array of tile ``index`` (uncropped)."""
        return self.group[f"tiles/{index}/data"]

    def alpha(self, index: int) -> zarr.Array | None:
        """The raw (H, W) ALPHA array of tile ``index``, or None."""
        if not self.records[index].has_alpha:
            return None
        return self.group[f"tiles/{index}/alpha"]

    def read_data(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        """(C, h, w) float32 region of the uncropped tile."""
        return self.data(index)[:, rows, cols]

    def read_alpha(self, index: int, rows: slice, cols: slice) -> np.ndarray | None:
        arr = self.alpha(index)
        return None if arr is None else arr[rows, cols]


def ingest_tiles(paths: Sequence[str | Path], store_path: str | Path, *,
                 skip_bad: bool = False,
                 progress: Callable[[int, int, str], None] | None = None,
                 chunk: int = TILE_CHUNK) -> TileStore:
    """Validate and copy master tiles into a TileStore at ``store_path``.

    Every tile is validated before anything is written, so a bad tile never
    leaves a half-made store.  With ``skip_bad`` a bad tile is skipped with a
    warning (ZeMosaic's behaviour, §0.3); otherwise the first bad tile raises
    :class:`InputError`.
    """
    if not paths:
        raise InputError(None, "no input tiles were given")
    store_path = Path(store_path)
    validated: list[tuple[Path, fits.Header, WCS]] = []
    seen_checksums: dict[str, Path] = {}
    channel_counts: dict[int, Path] = {}
    skipped: list[str] = []
    for path in map(Path, paths):
        try:
            chw, alpha, header, n_in = read_tile_fits(path)
            wcs = validate_wcs(header, path)
            if not np.any(np.isfinite(chw)):
                raise InputError(path, "every pixel is NaN or infinite (empty tile)")
            checksum = _file_checksum(path)
            if checksum in seen_checksums:
                raise InputError(path, f"duplicate tile: same content as {seen_checksums[checksum]}")
            channel_counts.setdefault(n_in, path)
            if len(channel_counts) > 1:
                other = [p for n, p in channel_counts.items() if n != n_in][0]
                raise InputError(path, f"has {n_in} channel(s) but {other} has "
                                       f"{3 if n_in == 1 else 1}; all tiles must have the same "
                                       "channel count")
            seen_checksums[checksum] = path
            validated.append((path, header, wcs))
            del chw, alpha
        except InputError as exc:
            if not skip_bad:
                raise
            log.warning("skipping bad tile %s", exc)
            skipped.append(str(exc))
            if 'n_in' in locals() and channel_counts.get(n_in) == path:
                channel_counts.pop(n_in, None)
    if not validated:
        raise InputError(None, "no usable input tile (all were skipped: " + "; ".join(skipped) + ")")

    group = zarr.open_group(str(store_path), mode="w")
    records: list[TileRecord] = []
    for index, (path, header, wcs) in enumerate(validated):
        chw, alpha, header, n_in = read_tile_fits(path)
        _, height, width = chw.shape
        tile_group = group.require_group(f"tiles/{index}")
        data_arr = tile_group.create_array("data", shape=chw.shape, dtype="float32",
                                           chunks=(3, min(chunk, height), min(chunk, width)))
        data_arr[...] = chw
        has_alpha = alpha is not None
        alpha_usable = False
        alpha_max = None
        warn: list[str] = []
        if has_alpha:
            squeezed = np.squeeze(alpha)
            if squeezed.ndim == 3 and squeezed.shape[0] == 1:
                squeezed = squeezed[0]
            alpha_usable = squeezed.shape == (height, width)
            if not alpha_usable:
                warn.append(f"ALPHA shape {alpha.shape} differs from the data's {(height, width)}: "
                            "ignored (as ZeMosaic does)")
                log.warning("%s: %s", path, warn[-1])
                has_alpha = False
            else:
                alpha = squeezed
                finite = alpha[np.isfinite(alpha)] if alpha.dtype.kind == "f" else alpha
                alpha_max = float(finite.max()) if finite.size else 0.0
                if alpha.dtype.kind == "f" and alpha_max <= 1.0:
                    warn.append("float ALPHA in [0, 1]: ZeMosaic's alpha union reads it as all "
                                "zero, so the whole mosaic is NaN (reproduced; write ALPHA as "
                                "uint8 0..255)")
                    log.warning("%s: %s", path, warn[-1])
                if alpha_max <= 0:
                    warn.append("ALPHA is zero everywhere: the tile contributes nothing")
                    log.warning("%s: %s", path, warn[-1])
                alpha_arr = tile_group.create_array(
                    "alpha", shape=alpha.shape, dtype=alpha.dtype,
                    chunks=(min(chunk, height), min(chunk, width)))
                alpha_arr[...] = alpha
        if n_in == 1:
            warn.append("mono tile copied into three identical channels (no ZeMosaic behaviour)")
        records.append(TileRecord(
            index=index, source=str(path.resolve()), tile_id=tile_identifier(header, index),
            shape_hw=(int(height), int(width)), header=header.tostring(),
            n_channels_in=n_in, has_alpha=has_alpha,
            alpha_dtype=str(alpha.dtype) if has_alpha else None,
            alpha_max=alpha_max, alpha_usable=alpha_usable,
            nframes_raw=frame_count(header), empty_flag=bool(header.get("ZMT_EMPT", False)),
            checksum=_file_checksum(path), bytes=int(chw.nbytes), warnings=warn))
        if progress is not None:
            progress(index + 1, len(validated), str(path))
    group.attrs["tiles"] = [r.to_json() for r in records]
    group.attrs["skipped"] = skipped
    return TileStore(store_path, group, records)
