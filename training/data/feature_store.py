"""Feature store: precomputed image features in an LMDB directory, read zero-copy.

Store layout
------------
A store is an LMDB environment directory (``data.mdb`` + ``lock.mdb``). Each record's key is
the UTF-8 image key; by convention the image file name without extension (e.g.
``COCO_train2014_000000000009``, see ``key_for_image``), so a dataset finds an image's features
from its file name. The reserved key ``__meta__`` holds store metadata as UTF-8 JSON::

    {"format": "pythia-feature-store", "version": 1, "count": <records>,
     "dtype": "float16" | "float32" | null, "feature_dim": D | null,
     "kind": "grid" | "region" | "mixed" | null, "complete": bool,
     "created_by": "<command line>", "created_at": ISO-8601, "updated_at": ISO-8601, ...}

plus any extra entries the writer was given (e.g. ``backbone``, ``image_size``, ``weights``).
``__meta__`` is rewritten in every committed transaction, so ``count`` always matches the
records present; ``complete`` is false until a writer closed without an exception.

Record (value) binary format -- the contract
--------------------------------------------
::

    offset 0   4 bytes   magic b"PYFS"
    offset 4   4 bytes   uint32 little-endian L = length of the JSON header
    offset 8   L bytes   UTF-8 JSON header:
                         {"arrays": {name: {"dtype": "<f2", "shape": [N, D], "offset": int}},
                          "attrs": {...}}
               zero padding up to the first array
    offset k   raw C-order bytes of each array at its "offset" (measured from the start of the
               value, always a multiple of 64), arrays separated by zero padding

``dtype`` is a little-endian numpy type string (``"<f2"``, ``"<f4"``, ``"<i8"``, ``"|u1"``,
...); an array occupies ``prod(shape) * itemsize`` bytes. A record holds:

* ``features``: (N, D) float16 or float32 -- N region features, or a grid of h x w cells
  flattened row-major to (h*w, D) (cell (i, j) is row ``i * w + j``).
* ``boxes`` (optional): (N, 4) float32, pixel ``x1, y1, x2, y2`` in the original image.
* any other named numeric arrays (e.g. ``objects``).

and small JSON ``attrs``: ``kind`` (``"grid"`` | ``"region"``), ``grid`` ([h, w], grids only),
``image_w`` / ``image_h`` (original image size, after EXIF orientation), ``num_boxes``, ...

Reading
-------
``FeatureStore(path).get(key)`` returns ``{name: np.ndarray}`` whose arrays are read-only,
zero-copy views on LMDB's memory map (no bytes are copied; ``arr.flags.owndata`` is false).
Each array keeps the LMDB environment open, so a view stays valid after ``close()`` or after
the ``FeatureStore`` object is gone; pass ``copy=True`` for writable arrays. ``torch.tensor(arr)``
or ``np.array(arr)`` copies; ``torch.from_numpy`` would warn that the array is read-only.

py-lmdb opens an environment once per process, so all ``FeatureStore`` objects on one store in
a process share one environment and one long-lived read transaction (a snapshot taken when it
was opened). It is opened lazily per process: the pid is recorded, and after ``fork`` (e.g.
``DataLoader`` workers) the child closes the inherited environment and opens its own -- unless
arrays read before the fork are still alive in the child, which then keeps reading through the
inherited, read-only one. A store pickles without its handle (``spawn`` workers reopen it).
Readers use ``lock=False``: do not read a store while another process writes to it. In this
process, ``FeatureStoreWriter`` on a store first closes the read environment (the readers
reopen it afterwards and see the new records) and refuses while arrays read from it are alive.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import shlex
import struct
import sys
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

__all__ = [
    "ALIGNMENT",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAGIC",
    "META_KEY",
    "DuplicateKeyError",
    "FeatureStore",
    "FeatureStoreWriter",
    "decode_record",
    "encode_record",
    "key_for_image",
]

MAGIC = b"PYFS"
ALIGNMENT = 64
META_KEY = "__meta__"
FORMAT_NAME = "pythia-feature-store"
FORMAT_VERSION = 1
FEATURE_DTYPES = ("float16", "float32")
KINDS = ("grid", "region")

_PREFIX = struct.Struct("<4sI")
_META_KEY_B = META_KEY.encode()


class DuplicateKeyError(ValueError):
    """``put`` of a key that is already in the store (and ``overwrite`` is off)."""


def key_for_image(path: str | os.PathLike[str]) -> str:
    """The store key of an image file: its file name without extension."""
    return Path(path).stem


# --------------------------------------------------------------------------------------------
# Record encoding


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.size <= 64:
        return obj.tolist()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"attribute value of type {type(obj).__name__} is not JSON-serializable")


def _prepare_array(name: str, arr: Any) -> np.ndarray:
    if not isinstance(name, str) or not name:
        raise ValueError(f"array names must be non-empty strings, got {name!r}")
    a = np.asarray(arr)
    if a.dtype.kind not in "biufc" or a.dtype.hasobject:
        raise ValueError(f"array {name!r}: dtype {a.dtype} is not a plain numeric dtype")
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)


def encode_record(arrays: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> bytes:
    """Serialize named arrays + JSON attrs into one record value (format in the module doc)."""
    prepared = [(name, _prepare_array(name, arr)) for name, arr in arrays.items()]
    attrs_dict = dict(attrs or {})
    specs: dict[str, dict[str, Any]] = {
        name: {"dtype": a.dtype.str, "shape": list(a.shape), "offset": 0} for name, a in prepared
    }
    data_start = _align(_PREFIX.size + 64 + 40 * len(prepared))
    while True:  # offsets are in the header, so its length depends on them: iterate to a fixpoint
        offset = data_start
        end = data_start
        for name, a in prepared:
            specs[name]["offset"] = offset
            end = offset + a.nbytes
            offset = _align(end)
        try:
            header = json.dumps(
                {"arrays": specs, "attrs": attrs_dict},
                separators=(",", ":"), default=_json_default, allow_nan=True,
            ).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"attrs are not JSON-serializable: {exc}") from None
        needed = _align(_PREFIX.size + len(header))
        if needed <= data_start:
            break
        data_start = needed
    buf = bytearray(end if prepared else _PREFIX.size + len(header))
    _PREFIX.pack_into(buf, 0, MAGIC, len(header))
    buf[_PREFIX.size:_PREFIX.size + len(header)] = header
    for name, a in prepared:
        if a.nbytes:
            off = specs[name]["offset"]
            np.frombuffer(buf, np.uint8, count=a.nbytes, offset=off)[:] = (
                a.reshape(-1).view(np.uint8)
            )
    return bytes(buf)


class _CorruptRecord(ValueError):
    pass


def _parse_header(buf: Any) -> tuple[dict[str, tuple[np.dtype[Any], tuple[int, ...], int]],
                                     dict[str, Any]]:
    """Validate a record's header; return ({name: (dtype, shape, offset)}, attrs)."""
    size = len(buf)
    if size < _PREFIX.size:
        raise _CorruptRecord(f"truncated record ({size} bytes)")
    magic, hlen = _PREFIX.unpack_from(buf, 0)
    if magic != MAGIC:
        raise _CorruptRecord(f"bad magic {bytes(magic)!r} (expected {MAGIC!r})")
    if _PREFIX.size + hlen > size:
        raise _CorruptRecord(f"truncated header ({hlen} header bytes, record is {size} bytes)")
    try:
        header = json.loads(bytes(buf[_PREFIX.size:_PREFIX.size + hlen]))
        arrays_spec = header["arrays"]
        attrs = header["attrs"]
        if not isinstance(arrays_spec, dict) or not isinstance(attrs, dict):
            raise TypeError("'arrays' and 'attrs' must be objects")
        out: dict[str, tuple[np.dtype[Any], tuple[int, ...], int]] = {}
        for name, spec in arrays_spec.items():
            dtype = np.dtype(spec["dtype"])
            shape = tuple(int(s) for s in spec["shape"])
            offset = int(spec["offset"])
            if dtype.hasobject or any(s < 0 for s in shape) or offset < _PREFIX.size + hlen:
                raise ValueError(f"bad spec for array {name!r}: {spec}")
            nbytes = math.prod(shape) * dtype.itemsize
            if offset + nbytes > size:
                raise _CorruptRecord(
                    f"truncated record: array {name!r} needs bytes {offset}..{offset + nbytes}, "
                    f"record is {size} bytes"
                )
            out[name] = (dtype, shape, offset)
    except _CorruptRecord:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _CorruptRecord(f"unreadable header ({type(exc).__name__}: {exc})") from None
    return out, attrs


def decode_record(buf: bytes | bytearray | memoryview,
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Parse a record value: (arrays as views on ``buf``, attrs). Raises ``ValueError``."""
    specs, attrs = _parse_header(buf)
    arrays = {
        name: np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
        for name, (dtype, shape, offset) in specs.items()
    }
    return arrays, attrs


# --------------------------------------------------------------------------------------------
# Reader


class _Handle:
    """One process's LMDB environment on a store + its long-lived read transaction
    (``buffers=True``). ``pins`` holds the live array wrappers that point into its map: the
    environment is only ever closed while ``pins`` is empty."""

    __slots__ = ("entries", "env", "meta", "pid", "pins", "txn")

    def __init__(self, env: lmdb.Environment, txn: lmdb.Transaction, entries: int,
                 meta: dict[str, Any]) -> None:
        self.env: lmdb.Environment | None = env
        self.txn = txn
        self.pid = os.getpid()
        self.entries = entries
        self.meta = meta
        self.pins: weakref.WeakSet[_Pinned] = weakref.WeakSet()

    def close(self) -> None:
        env, self.env, self.pid = self.env, None, -1
        if env is not None:
            env.close()  # also ends self.txn


class _Pinned:
    """Exposes one array of the memory map to numpy and keeps its ``_Handle`` open."""

    __slots__ = ("__array_interface__", "__weakref__", "_handle")

    def __init__(self, interface: dict[str, Any], handle: _Handle) -> None:
        self.__array_interface__ = interface
        self._handle = handle
        handle.pins.add(self)


# One handle per store file (st_dev, st_ino of data.mdb) in this process: py-lmdb refuses to
# open an environment twice in one process, so every FeatureStore on a store shares it.
_HANDLES: dict[tuple[int, int], _Handle] = {}
_HANDLES_LOCK = threading.RLock()


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path / "data.mdb")
    return st.st_dev, st.st_ino


def _acquire(path: Path, max_readers: int) -> tuple[tuple[int, int], _Handle]:
    """This process's handle on the store at ``path``, opening it if needed.

    A handle inherited from the parent process through ``fork`` is closed and reopened (LMDB
    environments must not be used across fork) -- unless arrays read before the fork still
    point into its map; then the child keeps reading through it (read-only, lock-free)."""
    _check_store_dir(path)
    key = _file_id(path)
    with _HANDLES_LOCK:
        handle = _HANDLES.get(key)
        if handle is not None and handle.pid != os.getpid():
            if len(handle.pins) == 0:
                handle.close()
                handle = None
            else:
                handle.pid = os.getpid()
        if handle is None or handle.env is None:
            try:
                env = lmdb.open(str(path), readonly=True, lock=False, readahead=False,
                                max_readers=max_readers, subdir=True, max_dbs=0)
            except lmdb.Error as exc:
                raise ValueError(
                    f"{path} is not a readable LMDB feature store: {exc} (a FeatureStoreWriter "
                    "open on it in this process must be closed first)") from None
            try:
                txn = env.begin(buffers=True)
                meta = _parse_meta(txn.get(_META_KEY_B), path)
            except BaseException:
                env.close()
                raise
            handle = _Handle(env, txn, int(env.stat()["entries"]), meta)
            _HANDLES[key] = handle
        return key, handle


def _release(path: Path) -> None:
    """Close this process's read handle on ``path`` (before writing to it). Raises
    ``ValueError`` while arrays read from it are still alive."""
    try:
        key = _file_id(path)
    except OSError:
        return
    with _HANDLES_LOCK:
        handle = _HANDLES.get(key)
        if handle is None:
            return
        if len(handle.pins):
            raise ValueError(
                f"feature store {path} is being read in this process: {len(handle.pins)} "
                "array(s) read from it are still alive (they point into its memory map); drop them "
                "(or read with copy=True) before writing to the store")
        del _HANDLES[key]
        handle.close()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _check_store_dir(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"feature store not found: {path}")
    if not path.is_dir():
        raise ValueError(
            f"{path} is not a feature store: a store is a directory holding data.mdb"
        )
    if not (path / "data.mdb").is_file():
        raise ValueError(
            f"{path} is not a feature store (no data.mdb in it); create one with "
            f"`python -m training.features extract|import-npy|import-tsv ... --out {path}`"
        )


def _parse_meta(raw: Any, path: Path) -> dict[str, Any]:
    if raw is None:
        raise ValueError(f"{path} is an LMDB database but not a feature store (no {META_KEY} "
                         "record)")
    try:
        meta = json.loads(bytes(raw))
    except ValueError as exc:
        raise ValueError(f"{path}: unreadable {META_KEY} record ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a feature store ({META_KEY} is not a {FORMAT_NAME} "
                         "record)")
    version = meta.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path}: feature store format version {version!r} is not supported "
                         f"(this code reads versions <= {FORMAT_VERSION})")
    return meta


class FeatureStore:
    """Read-only access to a feature store (see the module docstring for the format).

    ``get(key)`` -> ``{name: read-only zero-copy np.ndarray}``; ``attrs(key)`` -> dict;
    ``get_record(key)`` -> both with one header parse. ``key in store``, ``len(store)``,
    ``store.keys()``, ``store.meta``. A missing key raises ``KeyError`` and a corrupt record
    ``ValueError`` (both name the key and the store path). Fork- and pickle-safe.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_readers: int = 2048) -> None:
        self.path = Path(path)
        self.max_readers = max_readers
        self._key: tuple[int, int] | None = None
        self._h()  # validate now: FileNotFoundError / ValueError for a missing or foreign path

    # -- lifecycle -------------------------------------------------------------------------

    def _h(self) -> _Handle:
        handle = _HANDLES.get(self._key) if self._key is not None else None
        if handle is None or handle.pid != os.getpid():
            self._key, handle = _acquire(self.path, self.max_readers)
        return handle

    def close(self) -> None:
        """Close this process's LMDB environment on the store unless arrays read from it are
        still alive (they keep it open). Any later read reopens it."""
        if self._key is None:
            return
        with _HANDLES_LOCK:
            handle = _HANDLES.get(self._key)
            if handle is not None and handle.pid == os.getpid() and len(handle.pins) == 0:
                del _HANDLES[self._key]
                handle.close()
        self._key = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "max_readers": self.max_readers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self.max_readers = state["max_readers"]
        self._key = None  # opened lazily in the unpickling process

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r})"

    # -- mapping interface -----------------------------------------------------------------

    @property
    def meta(self) -> dict[str, Any]:
        """The store's ``__meta__`` record (a copy)."""
        return dict(self._h().meta)

    def __len__(self) -> int:
        return self._h().entries - 1

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or key == META_KEY:
            return False
        return self._h().txn.get(key.encode("utf-8")) is not None

    def keys(self) -> Iterator[str]:
        """All record keys (``__meta__`` excluded), in LMDB (byte-wise sorted) order."""
        with self._h().txn.cursor() as cursor:
            for raw in cursor.iternext(keys=True, values=False):
                key = bytes(raw).decode("utf-8")
                if key != META_KEY:
                    yield key

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def _raw(self, key: str) -> tuple[_Handle, Any]:
        if not isinstance(key, str):
            raise TypeError(f"feature store keys are str, got {type(key).__name__}")
        handle = self._h()
        buf = handle.txn.get(key.encode("utf-8")) if key != META_KEY else None
        if buf is None:
            raise KeyError(f"{key!r} not found in feature store {self.path}")
        return handle, buf

    def _parse(self, key: str, buf: Any) -> tuple[
            dict[str, tuple[np.dtype[Any], tuple[int, ...], int]], dict[str, Any]]:
        try:
            return _parse_header(buf)
        except _CorruptRecord as exc:
            raise ValueError(f"corrupt record {key!r} in feature store {self.path}: {exc}") \
                from None

    def get_record(self, key: str, *, copy: bool = False,
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, attrs) of ``key``. Arrays are read-only zero-copy views unless ``copy``."""
        handle, buf = self._raw(key)
        specs, attrs = self._parse(key, buf)
        arrays: dict[str, np.ndarray] = {}
        if copy:
            for name, (dtype, shape, offset) in specs.items():
                arrays[name] = np.frombuffer(buf, dtype, math.prod(shape), offset).reshape(shape)
                arrays[name] = arrays[name].copy()
            return arrays, attrs
        base = np.frombuffer(buf, np.uint8).__array_interface__["data"][0]
        for name, (dtype, shape, offset) in specs.items():
            interface = {"data": (base + offset, True), "shape": shape,
                         "typestr": dtype.str, "version": 3}
            arrays[name] = np.asarray(_Pinned(interface, handle))
        return arrays, attrs

    def get(self, key: str, *, copy: bool = False) -> dict[str, np.ndarray]:
        """``{name: array}`` of ``key`` (read-only zero-copy views unless ``copy``)."""
        return self.get_record(key, copy=copy)[0]

    def __getitem__(self, key: str) -> dict[str, np.ndarray]:
        return self.get(key)

    def attrs(self, key: str) -> dict[str, Any]:
        """The JSON attrs of ``key`` (``kind``, ``grid``, ``image_w``, ``image_h``, ...)."""
        _, buf = self._raw(key)
        return self._parse(key, buf)[1]


# --------------------------------------------------------------------------------------------
# Writer


class FeatureStoreWriter:
    """Create (or append to) a feature store.

    ``with FeatureStoreWriter(path) as w: w.put(key, {"features": f, "boxes": b}, attrs)``.

    Puts are committed in batches (every ``commit_every`` records or ``commit_bytes`` bytes);
    the map grows automatically when full. ``features`` must be (N, D) float16/float32 (cast to
    ``dtype`` when given) with the same D and dtype in every record; ``boxes`` (N, 4) is stored
    as float32. A key already present raises ``DuplicateKeyError`` unless ``overwrite``.
    ``meta`` entries are merged into ``__meta__``; when appending to an existing store, the
    entries named in ``same_meta`` (e.g. ``backbone``) must equal the stored ones.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = 1 << 30,
        commit_every: int = 256,
        commit_bytes: int = 256 << 20,
        overwrite: bool = False,
        dtype: str | None = None,
        created_by: str | None = None,
        meta: Mapping[str, Any] | None = None,
        same_meta: Sequence[str] = (),
    ) -> None:
        if dtype is not None and dtype not in FEATURE_DTYPES:
            raise ValueError(f"dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
        if commit_every < 1:
            raise ValueError("commit_every must be >= 1")
        self.path = Path(path)
        self.overwrite = overwrite
        self.dtype = dtype
        self.commit_every = commit_every
        self.commit_bytes = commit_bytes
        self._pending: list[tuple[bytes, bytes]] = []
        self._pending_bytes = 0
        self._closed = False

        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"cannot write feature store {self.path}: it is a file")
        existing = (self.path / "data.mdb").is_file()
        if self.path.is_dir() and not existing and any(self.path.iterdir()):
            raise ValueError(f"cannot write feature store {self.path}: the directory is not "
                             "empty and holds no store")
        self.path.mkdir(parents=True, exist_ok=True)
        if existing:
            map_size = max(map_size, (self.path / "data.mdb").stat().st_size)
        self._map_size = max(int(map_size), 1 << 20)
        if existing:
            _release(self.path)  # py-lmdb allows one environment per store and process
        try:
            self._env = lmdb.open(str(self.path), map_size=self._map_size, subdir=True,
                                  meminit=False, max_dbs=0)
        except lmdb.Error as exc:
            raise ValueError(f"cannot open feature store {self.path} for writing: {exc}") \
                from None
        try:
            self._db = self._env.open_db()
            self._txn = self._env.begin(write=True)
            now = _now()
            if existing:
                self._meta = _parse_meta(self._txn.get(_META_KEY_B), self.path)
                for name in same_meta:
                    if name in self._meta and (meta or {}).get(name) != self._meta[name]:
                        raise ValueError(
                            f"feature store {self.path} was written with {name}="
                            f"{self._meta[name]!r}; refusing to add records made with {name}="
                            f"{(meta or {}).get(name)!r} (use another store)")
                if created_by:
                    self._meta["last_written_by"] = created_by
            else:
                self._meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "count": 0,
                              "dtype": None, "feature_dim": None, "kind": None,
                              "created_by": created_by or shlex.join(sys.argv),
                              "created_at": now}
            self._meta.update(dict(meta or {}))
            self._meta["complete"] = False
            self._meta["updated_at"] = now
            self._commit()
        except BaseException:
            self._env.close()
            raise

    # -- writing ---------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or key == META_KEY:
            return False
        self._check_open()
        return self._txn.get(key.encode("utf-8")) is not None

    @property
    def count(self) -> int:
        """Records in the store, including uncommitted puts."""
        self._check_open()
        return int(self._txn.stat(self._db)["entries"]) - 1

    def put(self, key: str, arrays: Mapping[str, Any],
            attrs: Mapping[str, Any] | None = None) -> None:
        """Add one record. See the class doc for the array rules; raises ``ValueError``."""
        self._check_open()
        key_b = self._check_key(key)
        arrays = dict(arrays)
        attrs = dict(attrs or {})
        if "features" not in arrays:
            raise ValueError(f"record {key!r}: a 'features' array is required")
        feats = np.asarray(arrays["features"])
        if feats.ndim != 2:
            raise ValueError(f"record {key!r}: features must be 2-D (N, D), got shape "
                             f"{feats.shape}")
        if self.dtype is not None:
            feats = feats.astype(self.dtype, copy=False)
        elif feats.dtype.name not in FEATURE_DTYPES:
            raise ValueError(f"record {key!r}: features dtype must be float16 or float32, got "
                             f"{feats.dtype} (or pass dtype= to the writer to cast)")
        arrays["features"] = feats
        n, dim = feats.shape
        if self._meta["feature_dim"] is not None and dim != self._meta["feature_dim"]:
            raise ValueError(f"record {key!r}: feature dim {dim} differs from the store's "
                             f"{self._meta['feature_dim']}")
        if self._meta["dtype"] is not None and feats.dtype.name != self._meta["dtype"]:
            raise ValueError(f"record {key!r}: features dtype {feats.dtype} differs from the "
                             f"store's {self._meta['dtype']}")
        if "boxes" in arrays:
            boxes = np.asarray(arrays["boxes"])
            if boxes.shape != (n, 4) or boxes.dtype.kind not in "iuf":
                raise ValueError(f"record {key!r}: boxes must be numeric ({n}, 4) to match "
                                 f"{n} features, got {boxes.dtype} {boxes.shape}")
            arrays["boxes"] = boxes.astype(np.float32, copy=False)
        kind = attrs.get("kind")
        if kind is not None and kind not in KINDS:
            raise ValueError(f"record {key!r}: attr kind must be one of {KINDS}, got {kind!r}")
        if kind == "grid":
            grid = attrs.get("grid")
            if (not isinstance(grid, (list, tuple)) or len(grid) != 2
                    or int(grid[0]) * int(grid[1]) != n):
                raise ValueError(f"record {key!r}: a grid record needs attr grid=[h, w] with "
                                 f"h*w == {n}, got {grid!r}")
            attrs["grid"] = [int(grid[0]), int(grid[1])]
        value = encode_record(arrays, attrs)

        if not self._txn_put(key_b, value, self.overwrite):
            raise DuplicateKeyError(f"key {key!r} already exists in feature store {self.path} "
                                    "(pass overwrite=True to replace it)")
        self._meta["feature_dim"] = dim
        self._meta["dtype"] = feats.dtype.name
        if kind is not None:
            old = self._meta.get("kind")
            self._meta["kind"] = kind if old in (None, kind) else "mixed"
        self._pending.append((key_b, value))
        self._pending_bytes += len(value)
        if len(self._pending) >= self.commit_every or self._pending_bytes >= self.commit_bytes:
            self.commit()

    def commit(self) -> None:
        """Commit pending puts (and the updated ``__meta__``) now."""
        self._check_open()
        self._commit()

    def close(self, *, complete: bool = True) -> None:
        """Commit, mark the store ``complete`` (unless told otherwise) and close it."""
        if self._closed:
            return
        self._meta["complete"] = bool(complete)
        try:
            self._commit(begin_next=False)
            self._env.sync(True)
        finally:
            self._closed = True
            self._env.close()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._closed:
            return
        try:
            self.close(complete=exc_type is None)
        except Exception:
            if exc_type is None:
                raise  # a failure while closing after a clean run must surface

    # -- internals -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"feature store writer for {self.path} is closed")

    def _check_key(self, key: str) -> bytes:
        if not isinstance(key, str) or not key:
            raise ValueError(f"feature store keys must be non-empty str, got {key!r}")
        if key == META_KEY:
            raise ValueError(f"{META_KEY!r} is a reserved key")
        key_b = key.encode("utf-8")
        if len(key_b) > self._env.max_key_size():
            raise ValueError(f"key {key[:40]!r}... is {len(key_b)} bytes; LMDB allows "
                             f"{self._env.max_key_size()}")
        return key_b

    def _txn_put(self, key_b: bytes, value: bytes, overwrite: bool) -> bool:
        while True:
            try:
                return bool(self._txn.put(key_b, value, overwrite=overwrite))
            except lmdb.MapFullError:
                self._grow()

    def _grow(self) -> None:
        """Abort the write transaction, double the map and replay the uncommitted puts."""
        while True:
            with contextlib.suppress(lmdb.Error):
                self._txn.abort()
            self._map_size *= 2
            self._env.set_mapsize(self._map_size)
            self._txn = self._env.begin(write=True)
            try:
                for key_b, value in self._pending:
                    self._txn.put(key_b, value, overwrite=True)
                return
            except lmdb.MapFullError:
                continue

    def _commit(self, *, begin_next: bool = True) -> None:
        while True:
            try:
                count = int(self._txn.stat(self._db)["entries"])
                if self._txn.get(_META_KEY_B) is None:
                    count += 1  # the meta record about to be written
                self._meta["count"] = count - 1
                self._meta["updated_at"] = _now()
                meta_b = json.dumps(self._meta, default=_json_default).encode("utf-8")
                self._txn.put(_META_KEY_B, meta_b)
                self._txn.commit()
                break
            except lmdb.MapFullError:
                self._grow()
        self._pending.clear()
        self._pending_bytes = 0
        if begin_next:
            self._txn = self._env.begin(write=True)
