"""TileStore: master tiles (FITS) ingested into a chunked Zarr group.

Layout (ACCEPTANCE §6): each tile ``tiles/<i>/data`` is (C, H, W) float32 in
native byte order, C = 3 (R, G, B; mono input is copied into three identical
planes), chunked for region reads; ``tiles/<i>/alpha`` (H, W) keeps the ALPHA
extension's **raw dtype** (§2.2 and §5.3 read float and uint8 alphas
differently).  The group attribute ``tiles`` holds one record per tile: the
whole primary header (WCS with SIP, frame counts, ZMT_* keys), the source file,
its checksum and a few scalars derived from the full-resolution arrays.

A :class:`TileCache` (one per store) keeps whole planes in memory within a byte
budget, so the many region reads of a run are views instead of zarr reads.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import zarr
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..concurrency import ordered_map
from ..errors import InputError, StoreError
from .chunks import DirectArray
from .codecs import create_checked_array

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


def frame_count_warnings(header: fits.Header) -> list[str]:
    """One warning per frame-count key that ZeMosaic reads and ignores (§0.3).

    Only the keys before the one that is used are read: each present key whose
    value is not a finite number > 0 is named, with what the count falls back to.
    """
    bad: list[str] = []
    for key in FRAME_COUNT_KEYS:
        if key not in header:
            continue
        raw = header[key]
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = float("nan")
        if math.isfinite(value) and value > 0:
            fallback = f"using {key} = {raw!r} instead"
            break
        bad.append(f"frame count {key} = {raw!r} is not a positive number")
    else:
        fallback = "falling back to 1 frame (as ZeMosaic does)"
    return [f"{text}: ignored, {fallback}" for text in bad]


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
    """SHA-256 of the file's bytes (hex): a tile's identity in duplicate checks and on resume."""
    digest = hashlib.sha256()
    _feed_file(path, digest)
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
        raise InputError(path, f"primary data of shape {data.shape} has neither 3 (RGB) nor 1 "
                               "(mono) channels, first (C, H, W) or last (H, W, C)")
    return chw, 3


def _scaled(header: fits.Header) -> bool:
    """True when BSCALE/BZERO change the stored values."""
    return float(header.get("BSCALE", 1.0)) != 1.0 or float(header.get("BZERO", 0.0)) != 0.0


def read_tile_fits(path: str | Path, digest: Any = None) -> tuple[np.ndarray, np.ndarray | None, fits.Header, int]:
    """Read one master tile: (C, H, W) float32 native, raw ALPHA or None, header, input channels.

    ``digest`` (a ``hashlib`` object), when given, is fed every byte of the file: for the
    common layout (big-endian float32 RGB) from the same single read that gives the data.
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
                if view is data and data.dtype == np.dtype(">f4") and not _scaled(header):
                    # the common layout: one read() of the big-endian bytes, swapped in place
                    chw = _read_big_endian_f4(path, hdul.fileinfo(0)["datLoc"], data.shape, digest)
                    digest = None                                  # fed already
                else:
                    # one native float32 copy, made while the file is open (no intermediate copies)
                    chw = np.ascontiguousarray(view, dtype=np.float32)
                del view, data
    except InputError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        text = str(exc).lower()
        if "reshape" in text or "truncat" in text or "buffer is smaller" in text \
                or "buffer is too small" in text:
            problem = "truncated or corrupt FITS (the data is shorter than its header says)"
        elif isinstance(exc, KeyError) or "end card" in text or "keyword" in text \
                or "header" in text:
            problem = "corrupt FITS header"
        elif "no simple card" in text or "empty or corrupt" in text:
            problem = "not a FITS file (or a corrupt one)"
        else:
            problem = "cannot be read as FITS"
        raise InputError(path, f"{problem} ({exc.__class__.__name__}: {exc})") from exc
    if digest is not None:
        _feed_file(path, digest)
    return chw, alpha, header, n_in


def _feed_file(path: Path, digest: Any, fh: Any = None) -> None:
    """Feed ``digest`` the rest of ``fh`` (or the whole file at ``path``), 1 MiB at a time."""
    if fh is None:
        with open(path, "rb") as whole:
            _feed_file(path, digest, whole)
        return
    for piece in iter(lambda: fh.read(1 << 20), b""):
        digest.update(piece)


_SWAP_SLICE = 1 << 18      # float32 values byte-swapped at a time (1 MiB)


def _read_big_endian_f4(path: Path, data_offset: int, shape: tuple[int, ...], digest: Any) -> np.ndarray:
    """The big-endian float32 array at ``data_offset`` as native float32, in one read (no copy);
    ``digest`` (or None) gets every byte of the file on the way.

    Nothing here holds the GIL for long, so tiles read side by side: the buffer is not zeroed
    (a ``bytearray`` is, under the GIL), the read and the digest release it, and the bytes are
    swapped in place a slice at a time by numpy's cast, which releases it too (``byteswap``
    holds it: 20 ms per 2048² RGB tile against 15 ms, measured)."""
    count = math.prod(shape)
    buffer = np.empty(4 * count, dtype=np.uint8)
    with open(path, "rb") as fh:
        if digest is None:
            fh.seek(data_offset)
        else:
            digest.update(fh.read(data_offset))
        got = fh.readinto(buffer)
        if got != len(buffer):
            raise InputError(path, "truncated or corrupt FITS (the data is shorter than its header says)")
        if digest is not None:
            digest.update(buffer)
            _feed_file(path, digest, fh)
    big_endian, native = buffer.view(">f4"), buffer.view(np.float32)
    for start in range(0, count, _SWAP_SLICE):
        # overlapping views: numpy casts through a slice-sized temporary
        native[start:start + _SWAP_SLICE] = big_endian[start:start + _SWAP_SLICE]
    return native.reshape(shape)


def validate_wcs(header: fits.Header, path: Path) -> WCS:
    """A celestial 2-D WCS or :class:`InputError`."""
    try:
        wcs = header_wcs(header)
    except Exception as exc:  # astropy raises many kinds here
        raise InputError(path, f"WCS cannot be parsed ({exc})") from exc
    if not wcs.has_celestial or wcs.naxis < 2:
        raise InputError(path, "no celestial WCS in the primary header (need RA/DEC CTYPEs, "
                               "CRVAL, CRPIX and CD or CDELT)")
    for key in ("CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2"):
        # astropy quietly drops a card it cannot parse (CRVAL1 = NAN becomes 0)
        value = header.get(key)
        if value is None:
            raise InputError(path, f"WCS keyword {key} is missing")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not math.isfinite(float(value)):
            raise InputError(path, f"WCS keyword {key} = {value!r} is not a finite number")
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


def check_output_folder(store_path: str | Path) -> None:
    """:class:`StoreError` unless ``store_path`` can be a store in a writable folder.

    ``store_path`` itself must not be an existing non-folder; then walks up to the
    first path that exists: a regular file there (``a.txt/out.zarr``) or a folder
    without write permission stops the run before anything is read or written.
    """
    store_path = Path(os.path.abspath(store_path))
    if os.path.lexists(store_path) and not store_path.is_dir():
        raise StoreError(f"{store_path}: exists and is not a folder (a store is a folder); "
                         "remove it or choose another output path")
    folder = store_path.parent
    probe = folder
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise StoreError(f"cannot create the output folder {folder}: {probe} is a regular file, "
                         "not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StoreError(f"output folder {probe} is not writable")


def _alpha_plane(alpha: np.ndarray) -> np.ndarray:
    """The ALPHA extension as one plane: length-1 axes dropped ((1, H, W) → (H, W))."""
    squeezed = np.squeeze(alpha)
    if squeezed.ndim == 3 and squeezed.shape[0] == 1:
        squeezed = squeezed[0]
    return squeezed


def _alpha_all_zero(alpha: np.ndarray | None, shape_hw: tuple[int, ...]) -> bool:
    """True when a usable ALPHA (the data's shape, §0.3) has no value > 0: an empty tile."""
    if alpha is None:
        return False
    squeezed = _alpha_plane(alpha)
    if squeezed.shape != tuple(shape_hw):
        return False            # ignored, with a warning, at write time
    return not bool(np.any(squeezed > 0))


@dataclass
class SkyFootprint:
    """A tile's outline on the sky: unit vectors of its centre and of 8 edge points, in order."""

    center: np.ndarray           # (3,)
    ring: np.ndarray             # (8, 3): corners and edge midpoints of the pixel edges
    radius: float                # largest centre-to-outline angle, radians
    pixel: float                 # largest pixel size along an axis, radians


def _unit_vectors(lon_deg: np.ndarray, lat_deg: np.ndarray) -> np.ndarray:
    lon, lat = np.radians(lon_deg), np.radians(lat_deg)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def _angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle(s) between unit vectors, accurate at small angles."""
    return np.arctan2(np.linalg.norm(np.cross(u, v), axis=-1), np.sum(u * v, axis=-1))


def sky_footprint(wcs: WCS, shape_hw: tuple[int, ...]) -> SkyFootprint | None:
    """The tile outline through the full WCS (SIP included); None if it is not finite."""
    h, w = int(shape_hw[0]), int(shape_hw[1])
    xs = (-0.5, (w - 1) / 2.0, w - 0.5)
    ys = (-0.5, (h - 1) / 2.0, h - 0.5)
    ring = [(xs[0], ys[0]), (xs[1], ys[0]), (xs[2], ys[0]), (xs[2], ys[1]),
            (xs[2], ys[2]), (xs[1], ys[2]), (xs[0], ys[2]), (xs[0], ys[1])]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            world = np.asarray(wcs.all_pix2world(np.array([(xs[1], ys[1])] + ring), 0), float)
        lng, lat = wcs.wcs.lng, wcs.wcs.lat
        vectors = _unit_vectors(world[:, lng], world[:, lat])
    except Exception:  # noqa: BLE001 - an outline we cannot compute is never held against a tile
        return None
    if not np.all(np.isfinite(vectors)):
        return None
    center, outline = vectors[0], vectors[1:]
    pixel = max(float(_angle(center, outline[3])) / max(w / 2.0, 0.5),
                float(_angle(center, outline[5])) / max(h / 2.0, 0.5))
    return SkyFootprint(center, outline, float(np.max(_angle(center, outline))), pixel)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise hull of 2-D points (monotone chain)."""
    pts = sorted(map(tuple, points))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    upper: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def _separated(p: np.ndarray, q: np.ndarray, tol: float) -> bool:
    """Separating-axis test of two convex polygons: a gap wider than ``tol`` on some edge normal."""
    for poly in (p, q):
        if len(poly) < 2:
            continue
        edges = np.roll(poly, -1, axis=0) - poly
        normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
        lengths = np.linalg.norm(normals, axis=1)
        normals = normals[lengths > 0] / lengths[lengths > 0, None]
        sp, sq = p @ normals.T, q @ normals.T
        gap = np.maximum(sq.min(axis=0) - sp.max(axis=0), sp.min(axis=0) - sq.max(axis=0))
        if np.any(gap > tol):
            return True
    return False


def footprints_overlap(a: SkyFootprint, b: SkyFootprint) -> bool:
    """Whether two outlines intersect (or come within a pixel), in a gnomonic plane between them."""
    tol = max(a.pixel, b.pixel)
    if float(_angle(a.center, b.center)) > a.radius + b.radius + tol:
        return False
    mid = a.center + b.center
    norm = float(np.linalg.norm(mid))
    if norm < 1e-9:
        return True                  # centres opposite yet within reach: tiles of a hemisphere
    mid = mid / norm
    helper = np.array([0.0, 0.0, 1.0]) if abs(mid[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(helper, mid)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(mid, e1)
    points = np.vstack([a.ring, b.ring])
    dots = points @ mid
    if np.any(dots <= 1e-3):
        return True                  # too wide for a tangent plane: do not refuse such tiles
    plane = points / dots[:, None]
    xy = np.stack([plane @ e1, plane @ e2], axis=1)
    return not _separated(_convex_hull(xy[:8]), _convex_hull(xy[8:]), tol)


def isolated_tiles(footprints: Sequence[SkyFootprint | None]) -> list[tuple[int, str]]:
    """(index, problem) of every tile that overlaps no other one, when there are >= 2 tiles.

    Such a tile would stretch the output grid over the gap (a huge, mostly empty
    mosaic).  When no tile overlaps any other, the first is kept and the others are
    named.  Nothing is flagged when an outline cannot be computed.
    """
    n = len(footprints)
    if n < 2 or any(f is None for f in footprints):
        return []
    centers = np.array([f.center for f in footprints])
    radii = np.array([f.radius for f in footprints])
    pixels = np.array([f.pixel for f in footprints])
    distance = np.arccos(np.clip(centers @ centers.T, -1.0, 1.0))   # (n, n), ~1e-8 rad exact
    reach = radii[:, None] + radii[None, :] + np.maximum(pixels[:, None], pixels[None, :])
    has_neighbour = np.zeros(n, dtype=bool)
    for i, j in zip(*np.nonzero(np.triu(distance <= reach, k=1))):
        if has_neighbour[i] and has_neighbour[j]:
            continue
        if footprints_overlap(footprints[i], footprints[j]):
            has_neighbour[i] = has_neighbour[j] = True
    lonely = [k for k in range(n) if not has_neighbour[k]]
    if len(lonely) == n:
        lonely = lonely[1:]
    problems = []
    np.fill_diagonal(distance, np.inf)
    for k in lonely:
        nearest = float(np.degrees(distance[k].min()))
        size = float(np.degrees(2.0 * radii[k]))
        problems.append((k, f"overlaps no other input tile (the nearest is {nearest:.3g} deg away; "
                            f"this tile spans {size:.3g} deg), so the output grid would have to "
                            "span the gap"))
    return problems


class TileCache:
    """Whole tile arrays kept in memory, least recently used first out, within ``capacity`` bytes.

    A run reads every tile region many times (plan, calibration, union bboxes, every
    background pair, every block); each zarr read costs a few ms of fixed overhead.  The
    cache holds whole planes, read-only, keyed by (tile index, "data" | "alpha"), and is
    filled at ingest (the arrays just validated and written) or on the first read.  Arrays
    larger than the capacity are never cached (reads then go to the store, as before).
    Thread-safe; a store pickled for a Dask worker travels without its cache.
    """

    def __init__(self, capacity: int):
        self.capacity = max(0, int(capacity))
        self._items: "dict[tuple[int, str], np.ndarray]" = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, str]) -> np.ndarray | None:
        with self._lock:
            array = self._items.pop(key, None)
            if array is not None:
                self._items[key] = array          # most recently used last
            return array

    def has_room(self, nbytes: int) -> bool:
        """True when ``nbytes`` more fit without evicting anything."""
        with self._lock:
            return self._bytes + int(nbytes) <= self.capacity

    def put(self, key: tuple[int, str], array: np.ndarray) -> bool:
        """Keep ``array`` (made read-only) if it fits; evicts the least recently used."""
        if array.nbytes > self.capacity:
            return False
        array.setflags(write=False)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            while self._items and self._bytes + array.nbytes > self.capacity:
                oldest = next(iter(self._items))
                self._bytes -= self._items.pop(oldest).nbytes
            self._items[key] = array
            self._bytes += array.nbytes
        return True


class TileStore:
    """A Zarr group of ingested master tiles.  Thread-safe for concurrent reads.

    With a :class:`TileCache`, region reads of cached tiles are read-only views of
    the cached planes (callers copy before they modify, as §2 preparation does).
    """

    def __init__(self, path: str | Path, group: zarr.Group, records: list[TileRecord],
                 cache: TileCache | None = None):
        self.path = Path(path)
        self.group = group
        self.records = records
        self.cache = cache
        self._opened: dict[str, DirectArray] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["cache"] = None
        state["_opened"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_opened", {})

    @classmethod
    def open(cls, path: str | Path, cache: TileCache | None = None) -> "TileStore":
        group = zarr.open_group(str(path), mode="r")
        records = [TileRecord.from_json(d) for d in group.attrs["tiles"]]
        return cls(path, group, records, cache)

    def _cached(self, index: int, kind: str, array: DirectArray) -> np.ndarray | None:
        """The whole plane from the cache, reading it into the cache when it fits in the free
        room; else None (the caller reads its region from the store).

        A miss never evicts: the stages visit the tiles in the same cyclic order (block after
        block), and evicting the least recently used plane for the next one would re-read a
        whole tile for every region once the tiles outgrow the cache (measured on 16 tiles of
        2048² whose ingest left 9 in the cache: 29 more whole-tile reads in a first pass with
        eviction, none without)."""
        if self.cache is None:
            return None
        whole = self.cache.get((index, kind))
        if whole is None and self.cache.has_room(array.nbytes):
            whole = array[...]
            self.cache.put((index, kind), whole)
        return whole

    def _array(self, name: str) -> DirectArray:
        """The array ``name``, opened once (its metadata is a file read) and read on the calling
        thread (store/chunks.py)."""
        array = self._opened.get(name)
        if array is None:
            array = self._opened[name] = DirectArray(self.group[name])
        return array

    def data(self, index: int) -> DirectArray:
        """The (C, H, W) float32 array of tile ``index`` (uncropped)."""
        return self._array(f"tiles/{index}/data")

    def alpha(self, index: int) -> DirectArray | None:
        """The raw (H, W) ALPHA array of tile ``index``, or None."""
        if not self.records[index].has_alpha:
            return None
        return self._array(f"tiles/{index}/alpha")

    def read_data(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        """(C, h, w) float32 region of the uncropped tile."""
        array = self.data(index)
        whole = self._cached(index, "data", array)
        return array[:, rows, cols] if whole is None else whole[:, rows, cols]

    def read_alpha(self, index: int, rows: slice, cols: slice) -> np.ndarray | None:
        arr = self.alpha(index)
        if arr is None:
            return None
        whole = self._cached(index, "alpha", arr)
        return arr[rows, cols] if whole is None else whole[rows, cols]


def _any_finite(chw: np.ndarray, rows: int = 64) -> bool:
    """True when some value of the (C, H, W) array is finite: ``rows`` rows at a time, stopping
    at the first finite one (a whole-tile ``isfinite`` would hold a quarter of the tile)."""
    return any(bool(np.isfinite(chw[:, row:row + rows]).any()) for row in range(0, chw.shape[1], rows))


def _inspect_tile(path: Path) -> tuple[np.ndarray, np.ndarray | None, fits.Header, int, WCS, str, Any]:
    """The checks of one tile on its own (no cross-tile rule): arrays, header, WCS, checksum, footprint.

    The file is read once: the checksum comes from the bytes that give the data."""
    digest = hashlib.sha256()
    chw, alpha, header, n_in = read_tile_fits(path, digest=digest)
    wcs = validate_wcs(header, path)
    if not _any_finite(chw):
        raise InputError(path, "every pixel is NaN or infinite (empty tile)")
    if _alpha_all_zero(alpha, chw.shape[1:]):
        raise InputError(path, "ALPHA is zero everywhere: the tile contributes nothing "
                               "(empty tile)")
    return chw, alpha, header, n_in, wcs, digest.hexdigest(), sky_footprint(wcs, chw.shape[1:])


@dataclass
class _StagedTile:
    """A tile read, checked on its own and written under the store's ``staging/<position>``."""

    record: TileRecord               # index and tile_id set once the cross-tile checks have placed it
    header: fits.Header
    footprint: Any
    n_in: int
    arrays: dict[str, np.ndarray]    # what the cache may keep: "data" and, when usable, "alpha"


def _stage_tile(group: zarr.Group, position: int, path: Path, chunk: int) -> _StagedTile:
    """:func:`_inspect_tile`, then the tile's arrays written under ``staging/<position>``."""
    chw, alpha, header, n_in, _, checksum, footprint = _inspect_tile(path)
    _, height, width = chw.shape
    tile_group = group.require_group(f"staging/{position}")
    data_arr = DirectArray(create_checked_array(tile_group, "data", shape=chw.shape, dtype="float32",
                                                chunks=(3, min(chunk, height), min(chunk, width))))
    # one band of chunk rows at a time (whole chunks, written directly by store/chunks.py, one
    # chunk's copy at a time; a write through zarr holds an encoded copy of every chunk of the
    # call at once, which doubled the tile's memory when the whole tile went in one call)
    band = min(chunk, height)
    for row in range(0, height, band):
        data_arr[:, row:row + band, :] = chw[:, row:row + band, :]
    arrays = {"data": chw}
    has_alpha = alpha is not None
    alpha_usable = False
    alpha_max = None
    warn: list[str] = []
    if has_alpha:
        squeezed = _alpha_plane(alpha)
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
            alpha_arr = DirectArray(create_checked_array(tile_group, "alpha", shape=alpha.shape,
                                                         dtype=alpha.dtype,
                                                         chunks=(min(chunk, height), min(chunk, width))))
            alpha_arr[...] = alpha
            arrays["alpha"] = alpha
    if n_in == 1:
        warn.append("mono tile copied into three identical channels (no ZeMosaic behaviour)")
    for text in frame_count_warnings(header):
        warn.append(text)
        log.warning("%s: %s", path, text)
    record = TileRecord(
        index=-1, source=str(path.resolve()), tile_id="", shape_hw=(int(height), int(width)),
        header=header.tostring(), n_channels_in=n_in, has_alpha=has_alpha,
        alpha_dtype=str(alpha.dtype) if has_alpha else None,
        alpha_max=alpha_max, alpha_usable=alpha_usable,
        nframes_raw=frame_count(header), empty_flag=bool(header.get("ZMT_EMPT", False)),
        checksum=checksum, bytes=int(chw.nbytes), warnings=warn)
    return _StagedTile(record, header, footprint, n_in, arrays)


def _held_bytes(path: Path, chunk: int = TILE_CHUNK) -> int:
    """Peak memory of one tile in flight at ingest (an upper bound): its data read once, plus
    twice one band of ``chunk`` rows.

    The twice-a-band term is what zarr held while writing a band (its encoded copies).  That
    estimate was measured with tracemalloc (RGB float32 with uint8 ALPHA, 512-row chunks): 1.46×
    the file for 2048 rows against an estimate of 1.5×, and 1.93× for 1024 rows against 2×.
    The bands are now written chunk by chunk by store/chunks.py, and the empty-tile check no
    longer holds a whole-tile ``isfinite`` (a quarter of the file): the peak fell to 1.12× (2048
    rows; 1.08× for 3000, 1.21× for 1536) and 1.46× (1024 rows), so the estimate is
    conservative; it is kept as it is.  The rows are the header's
    shorter image side; a header that cannot be read counts as one band (3×)."""
    size = path.stat().st_size
    try:
        with warnings.catch_warnings():              # a damaged file is reported by its read
            warnings.simplefilter("ignore")
            header = fits.getheader(path, 0)
        axes = [int(header.get(f"NAXIS{k}", 0)) for k in range(1, int(header.get("NAXIS", 0)) + 1)]
        image_axes = [a for a in axes if a not in (1, 3)] if len(axes) > 2 else axes
        rows = min(image_axes, default=0)           # the shorter side: the larger band fraction
    except Exception:  # noqa: BLE001 - the read that follows reports a bad file properly
        rows = 0
    band = 1.0 if rows <= 0 else min(1.0, chunk / float(rows))
    return int(size * (1.0 + 2.0 * band))


def _prefetch(paths: Sequence[Path], workers: int, memory_budget: int | None) -> int:
    """Tiles read at once: ``workers``, fewer when that many tiles would pass a quarter of the budget."""
    if workers <= 1 or not paths:
        return 1
    if memory_budget is None:
        return int(workers)
    largest = max((_held_bytes(p) for p in paths if p.is_file()), default=1)
    return int(max(1, min(workers, (memory_budget // 4) // max(1, largest))))


def ingest_tiles(paths: Sequence[str | Path], store_path: str | Path, *,
                 skip_bad: bool = False,
                 progress: Callable[[int, int, str], None] | None = None,
                 chunk: int = TILE_CHUNK, cache: TileCache | None = None,
                 workers: int = 1, memory_budget: int | None = None) -> TileStore:
    """Validate and copy master tiles into a TileStore at ``store_path``.

    Every tile is read once: its checksum, checks and arrays come from the same bytes,
    and it is written to a staging store (``<store_path>.partial``) as soon as its own
    checks pass; the store takes its place at ``store_path`` only once every tile,
    including the cross-tile rules (duplicates, channel counts, isolated tiles), has
    been checked, so a bad tile never leaves a half-made store (nor touches an old one).
    With ``skip_bad`` a bad tile is skipped with a warning (ZeMosaic's behaviour, §0.3);
    otherwise the first bad tile raises :class:`InputError`.  The arrays written also go
    into ``cache`` (where they fit), keyed by their index in the store.  Tiles are read,
    checked and written on ``workers`` threads, a few at a time (within a quarter of
    ``memory_budget``); the checks and their messages come in input order, as with one
    thread.
    """
    # ``warnings.catch_warnings`` (used around astropy's FITS and WCS reads) is not thread-safe:
    # worker threads entering and leaving it out of order could leave a filter installed.  The
    # filters are saved here and restored once every worker has finished.
    with warnings.catch_warnings():
        return _ingest_tiles(paths, store_path, skip_bad=skip_bad, progress=progress, chunk=chunk,
                             cache=cache, workers=workers, memory_budget=memory_budget)


def _ingest_tiles(paths: Sequence[str | Path], store_path: str | Path, *, skip_bad: bool,
                  progress: Callable[[int, int, str], None] | None, chunk: int,
                  cache: TileCache | None, workers: int, memory_budget: int | None) -> TileStore:
    """:func:`ingest_tiles` inside its warnings guard."""
    if not paths:
        raise InputError(None, "no input tiles were given")
    store_path = Path(store_path)
    check_output_folder(store_path)
    partial = store_path.with_name(store_path.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    try:
        records, skipped, kept = _stage_tiles([Path(p) for p in paths], partial, skip_bad=skip_bad,
                                              progress=progress, chunk=chunk, cache=cache,
                                              workers=workers, memory_budget=memory_budget)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if store_path.exists():
        shutil.rmtree(store_path)
    os.replace(partial, store_path)
    group = zarr.open_group(str(store_path), mode="r+")
    group.attrs["tiles"] = [r.to_json() for r in records]
    group.attrs["skipped"] = skipped
    if cache is not None:
        for index, arrays in kept.items():
            for kind, array in arrays.items():
                cache.put((index, kind), array)
    return TileStore(store_path, group, records, cache)


def _stage_tiles(path_list: list[Path], partial: Path, *, skip_bad: bool,
                 progress: Callable[[int, int, str], None] | None, chunk: int,
                 cache: TileCache | None, workers: int, memory_budget: int | None
                 ) -> tuple[list[TileRecord], list[str], dict[int, dict[str, np.ndarray]]]:
    """Stage every tile in ``partial`` (``staging/<position>``), apply the cross-tile rules in
    input order, and move the kept tiles to ``tiles/<index>``: (records, skipped, arrays to cache)."""
    group = zarr.open_group(str(partial), mode="w")
    group.require_group("tiles")
    group.require_group("staging")
    accepted: list[tuple[int, Path, _StagedTile]] = []
    seen_checksums: dict[str, Path] = {}
    channel_counts: dict[int, Path] = {}
    skipped: list[str] = []
    kept_bytes = 0
    capacity = 0 if cache is None else cache.capacity

    def skip(exc: InputError) -> None:
        if not skip_bad:
            raise exc
        log.warning("skipping bad tile %s", exc)
        skipped.append(str(exc))

    prefetch = _prefetch(path_list, workers, memory_budget)
    # closed on the way out, so no worker still writes once the caller removes the staging store
    with contextlib.closing(ordered_map(lambda item: _stage_tile(group, item[0], item[1], chunk),
                                        list(enumerate(path_list)), prefetch)) as staged_items:
        for (position, path), staged in staged_items:
            if isinstance(staged, InputError):
                skip(staged)
                continue
            if isinstance(staged, BaseException):
                raise staged
            checksum, n_in = staged.record.checksum, staged.n_in
            problem = None
            if checksum in seen_checksums:
                problem = InputError(path, f"duplicate tile: same content as {seen_checksums[checksum]}")
            elif channel_counts and n_in not in channel_counts:
                other = next(iter(channel_counts.values()))
                problem = InputError(path, f"has {n_in} channel(s) but {other} has "
                                           f"{3 if n_in == 1 else 1}; all tiles must have the same "
                                           "channel count")
            if problem is not None:
                shutil.rmtree(partial / "staging" / str(position), ignore_errors=True)
                skip(problem)
                continue
            seen_checksums[checksum] = path
            channel_counts.setdefault(n_in, path)
            size = sum(a.nbytes for a in staged.arrays.values())
            if kept_bytes + size <= capacity:
                kept_bytes += size          # put in the cache below, under the tile's final index
            else:
                staged.arrays = {}
            accepted.append((position, path, staged))
            if progress is not None:
                progress(len(accepted), len(path_list), str(path))
    isolated = isolated_tiles([staged.footprint for _, _, staged in accepted])
    for k, problem in isolated:
        skip(InputError(accepted[k][1], problem))
    for k, _ in reversed(isolated):
        del accepted[k]
    if not accepted:
        raise InputError(None, "no usable input tile (all were skipped: " + "; ".join(skipped) + ")")
    records: list[TileRecord] = []
    kept: dict[int, dict[str, np.ndarray]] = {}
    for index, (position, path, staged) in enumerate(accepted):
        os.replace(partial / "staging" / str(position), partial / "tiles" / str(index))
        record = staged.record
        record.index = index
        record.tile_id = tile_identifier(staged.header, index)
        records.append(record)
        if staged.arrays:
            kept[index] = staged.arrays
    shutil.rmtree(partial / "staging", ignore_errors=True)
    return records, skipped, kept
