"""The soft-label cache (format v2): one file per split, read back by row without loading it.

A cache holds the teacher's outputs for the rows of one split, as *items*: vectors of one width, one item per row
for sequence classification, one per word or token for later tasks (ragged). The file is a valid `.safetensors`
file (`safetensors.safe_open` reads it), so that a rename puts a whole cache in place at once:

    bytes 0..7      N, a little-endian uint64: the length of the header
    bytes 8..8+N    the JSON header: {tensor name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
                    "__metadata__": {...}}, padded with spaces so that the data starts at a multiple of 64
    bytes 8+N..     the data: the tensors' bytes back to back, widest element first, so that each one starts
                    aligned to its element size:

    offsets  I64      [rows + 1]        row r holds items offsets[r] .. offsets[r+1] - 1 (offsets[0] = 0)
    payload "dense":
      values F32|F16  [items, classes]  the logits
    payload "topk":
      tail    F32     [items]           log of the softmax mass (T = 1) outside the top k, from the full logits:
                                        log(sum_{j not in top k} p_j) = logsumexp(z_rest) - logsumexp(z) <= 0,
                                        -inf when k = classes
      indices U16|I32 [items, k]        the classes of the k largest logits, largest first (U16 when there are at
                                        most 65,536 classes: lossless, a third fewer bytes than I32 at fp16 values)
      values  F16|F32 [items, k]        those logits

`__metadata__` (strings): format "kdistill-soft-labels-v2", fingerprint, payload ("dense" or "topk"), k ("0" for
dense), dtype ("float32" or "float16", of `values`), rows, items, classes, ragged ("false" when every row holds one
item) and sha256, the SHA-256 of the data bytes in file order.

The file name is `<cache_dir>/<split>-<fingerprint[:16]>.safetensors` (fingerprint.py). Files are written by
writer.CacheWriter; a v1 file (one float32 `logits` tensor [rows, classes], metadata rows and sha256) is read as it
is.
"""

import hashlib
import json
import logging
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError

logger = logging.getLogger(__name__)

FORMAT = "kdistill-soft-labels-v2"
FORMAT_V1 = "kdistill-soft-labels-v1"
PAYLOADS = ("dense", "topk")
VALUE_DTYPES = {"float32": "F32", "float16": "F16"}
NP_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
             "U16": np.uint16}
# Order of the tensors in the data: widest element first (this order among equals), so that every tensor starts
# aligned.
ORDER = ("offsets", "tail", "indices", "values")
DATA_ALIGN = 64


def index_dtype(classes: int) -> str:
    """The dtype a top-k cache stores its class indices in: U16 up to 65,536 classes, else I32."""
    return "U16" if classes <= 1 << 16 else "I32"

BLOCK = 1 << 20  # bytes read at a time when verifying

# A process's resident set counts the pages of a mapped file that it has touched. Past this many bytes of a cache
# touched (an upper bound: each contiguous range read may map FAULT_AROUND bytes more on either side, the Linux
# fault-around default), SoftLabels drops its mapped pages (madvise MADV_DONTNEED): they stay in the OS page cache,
# so a later read costs a minor fault, not a disk read. A cache smaller than this is never released.
RESIDENT_LIMIT = 256 << 20
FAULT_AROUND = 64 << 10


def cache_path(cache_dir: str, split: str, fp: str) -> str:
    return os.path.join(cache_dir, f"{split}-{fp[:16]}.safetensors")


def check_finite(logits: torch.Tensor, source: str, first_row: int = 0) -> None:
    """Raise UserError naming the first row of `logits` ([rows, ...]) that holds NaN or inf, counted from first_row."""
    bad = (~torch.isfinite(logits)).reshape(len(logits), -1).any(dim=1)
    if bad.any():
        raise _not_finite(source, int(bad.sum()), first_row + int(bad.nonzero()[0]))


def _not_finite(source: str, rows: int, first: int, what: str = "NaN or inf") -> UserError:
    return UserError(f"{source}: teacher logits hold {what} for {rows} row(s), first at row {first}")


def _unreadable(path: str, why: str) -> UserError:
    return UserError(f"soft-label cache {path} is unreadable ({why}); delete it to recompute")


def _mismatch(path: str, why: str) -> UserError:
    return UserError(f"soft-label cache {path} does not match its fingerprint ({why}); delete it to recompute")


@dataclass(frozen=True)
class _Spec:
    """Where one tensor lies in the data, in bytes from the start of the data."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(NP_DTYPES[self.dtype])


def header_bytes(specs: dict[str, _Spec], meta: dict[str, str]) -> bytes:
    """The 8-byte length and the JSON header, padded with spaces so that the data starts at a multiple of 64."""
    doc = {name: {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [s.begin, s.end]}
           for name, s in specs.items()}
    text = json.dumps({**doc, "__metadata__": meta}, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % DATA_ALIGN)
    return struct.pack("<Q", len(text)) + text


def _read_header(path: str) -> tuple[dict[str, _Spec], dict[str, str], int]:
    """The tensors, the metadata and where the data starts; ValueError if this is not a safetensors file."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise ValueError("its header length points past the end of the file")
        doc = json.loads(fh.read(n))
    if not isinstance(doc, dict):
        raise ValueError("its header is not a JSON object")
    meta = doc.pop("__metadata__", None) or {}
    specs, end = {}, 0
    for name, t in sorted(doc.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        spec = _Spec(t["dtype"], tuple(int(d) for d in t["shape"]), *(int(x) for x in t["data_offsets"]))
        if spec.dtype not in NP_DTYPES:
            raise ValueError(f"tensor {name} has dtype {spec.dtype}")
        if spec.begin != end or spec.end - spec.begin != int(np.prod(spec.shape)) * spec.np_dtype.itemsize:
            raise ValueError(f"tensor {name} does not fill bytes {spec.begin}..{spec.end} of the data")
        specs[name], end = spec, spec.end
    if 8 + n + end != size:
        raise ValueError(f"its header describes {8 + n + end} bytes but the file has {size}")
    return specs, meta, 8 + n


@dataclass(frozen=True)
class _Layout:
    """A cache's header, checked: what SoftLabels needs to map it again (e.g. in a DataLoader worker)."""

    path: str
    format: str
    fingerprint: str
    payload: str
    top_k: int | None
    value_dtype: str
    rows: int
    items: int
    classes: int
    ragged: bool
    specs: dict[str, _Spec]
    data_start: int
    sha256: str
    size: int


def _layout(path: str, specs: dict[str, _Spec], meta: dict[str, str], data_start: int) -> _Layout:
    """Check that the tensors are those the metadata describes (UserError if not)."""
    def number(key: str) -> int:
        try:
            return int(meta[key])
        except (KeyError, ValueError):
            raise _unreadable(path, f"metadata {key}={meta.get(key)!r}") from None

    size = os.path.getsize(path)
    if meta.get("format") == FORMAT_V1:
        logits = specs.get("logits")
        if logits is None or logits.dtype != "F32" or len(logits.shape) != 2 or set(specs) != {"logits"}:
            raise _unreadable(path, "a v1 cache is read only with one float32 tensor `logits` [rows, classes]")
        rows, classes = logits.shape
        if number("rows") != rows:
            raise _mismatch(path, f"{rows} rows of logits but metadata rows={meta['rows']}")
        return _Layout(path, FORMAT_V1, meta["fingerprint"], "dense", None, "float32", rows, rows, classes, False,
                       {"values": logits}, data_start, meta.get("sha256", ""), size)

    payload, k = meta.get("payload"), number("k")
    if payload not in PAYLOADS or meta.get("dtype") not in VALUE_DTYPES or meta.get("ragged") not in ("true", "false"):
        raise _unreadable(path, f"metadata payload={payload!r} dtype={meta.get('dtype')!r} ragged={meta.get('ragged')!r}")
    rows, items, classes = number("rows"), number("items"), number("classes")
    width = classes if payload == "dense" else k
    want = {"offsets": ("I64", (rows + 1,)), "values": (VALUE_DTYPES[meta["dtype"]], (items, width))}
    if payload == "topk":
        want.update(indices=(index_dtype(classes), (items, k)), tail=("F32", (items,)))
        if getattr(specs.get("indices"), "dtype", None) == "I32":  # written before U16 indices: read as it is
            want["indices"] = ("I32", (items, k))
        if not 1 <= k <= max(classes, 1):
            raise _mismatch(path, f"top k={k} of {classes} classes")
    got = {name: (s.dtype, s.shape) for name, s in specs.items()}
    if got != want:
        raise _mismatch(path, f"its tensors {got} are not those its metadata describes {want}")
    return _Layout(path, FORMAT, meta["fingerprint"], payload, k if payload == "topk" else None, meta["dtype"], rows,
                   items, classes, meta["ragged"] == "true", specs, data_start, meta.get("sha256", ""), size)


def _verify(layout: _Layout) -> None:
    """Stream the data in BLOCK-sized reads: its SHA-256 against the metadata, then what each tensor must hold.

    Offsets must rise from 0 to `items` (by exactly 1 per row unless ragged), indices lie in [0, classes), values be
    finite and tail be at most 0 (-inf allowed). Raises UserError for the first problem; never loads the file whole.
    """
    path, h = layout.path, hashlib.sha256()
    problems: list[str] = []
    bad_items: list[np.ndarray] = []  # items with NaN or inf
    with open(path, "rb") as fh:
        fh.seek(layout.data_start)
        last_offset = -1
        for name in sorted(layout.specs, key=lambda n: layout.specs[n].begin):
            spec = layout.specs[name]
            dtype, width = spec.np_dtype, int(np.prod(spec.shape[1:]))
            first, remaining = 0, spec.end - spec.begin
            while remaining:
                buf = fh.read(min(remaining, BLOCK))
                if not buf:
                    raise _mismatch(path, "the file is shorter than its header says")
                h.update(buf)
                block = np.frombuffer(buf, dtype=dtype)
                if name == "offsets":
                    steps = np.diff(block if first == 0 else np.concatenate(([last_offset], block)))
                    if ((first == 0 and block[0] != 0) or (steps < 0).any()
                            or (not layout.ragged and (steps != 1).any())):
                        problems.append("its row offsets are out of order")
                    last_offset = int(block[-1])
                elif name == "indices":
                    if ((block < 0) | (block >= layout.classes)).any():
                        problems.append(f"a class index outside 0..{layout.classes - 1}")
                else:
                    bad = np.isnan(block) | (np.isposinf(block) if name == "tail" else ~np.isfinite(block))
                    if bad.any():
                        bad_items.append((first + np.flatnonzero(bad)) // width)
                first += len(block)
                remaining -= len(buf)
        if "offsets" in layout.specs and last_offset != layout.items:
            problems.append(f"its offsets end at {last_offset}, not at items={layout.items}")
    if h.hexdigest() != layout.sha256:
        raise _mismatch(path, "contents changed")
    if problems:
        raise _mismatch(path, problems[0])
    if bad_items:
        bad = np.unique(np.concatenate(bad_items))
        spec = layout.specs.get("offsets")
        if spec is not None:  # items -> the rows that hold them
            offsets = np.memmap(path, np.int64, "r", offset=layout.data_start + spec.begin, shape=spec.shape)
            bad = np.unique(np.searchsorted(offsets, bad, side="right") - 1)
        raise _not_finite(path, len(bad), int(bad[0]))


def read_cache(path: str, fp: str, resident_limit: int = RESIDENT_LIMIT) -> "SoftLabels | None":
    """The cache at `path` if it holds the outputs fingerprinted `fp`; None if absent or made from other inputs.

    The file is verified (its SHA-256 and sizes, streamed) and then memory-mapped, not read. Raises UserError when
    it cannot be read, or claims `fp` but its contents do not match (a corrupt or edited file).

    Args:
        resident_limit: bytes of the file the returned SoftLabels may keep mapped in memory (see RESIDENT_LIMIT).
    """
    if not os.path.exists(path):
        return None
    try:
        specs, meta, data_start = _read_header(path)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise _unreadable(path, str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    if meta.get("format") not in (FORMAT, FORMAT_V1) or meta.get("fingerprint") != fp:
        logger.info("soft-label cache %s was made from other inputs; recomputing", path)
        return None
    layout = _layout(path, specs, meta, data_start)
    _verify(layout)
    if layout.format == FORMAT_V1:
        logger.info("soft-label cache %s is a v1 cache (dense, one row each); read as it is", path)
    return SoftLabels(layout, resident_limit)


def _index(rows) -> torch.Tensor:
    """Rows as a 1-D LongTensor (from a tensor, array, list or range)."""
    idx = rows if isinstance(rows, torch.Tensor) else torch.as_tensor(np.asarray(rows, dtype=np.int64))
    if idx.dtype != torch.long:
        idx = idx.long()
    if idx.ndim != 1:
        raise ValueError(f"rows must be 1-D, not of shape {tuple(idx.shape)}")
    return idx


class SoftLabels:
    """A soft-label cache, memory-mapped: rows are read when asked for, copied out, and never all at once.

    Attributes:
        rows, items, classes: counts (len() is rows); `ragged` is False when every row holds one item.
        payload: "dense" (all logits) or "topk" (the top_k largest logits, their classes and the tail mass).
        fingerprint, value_dtype, format, path: what the file says it holds.
    """

    def __init__(self, layout: _Layout, resident_limit: int = RESIDENT_LIMIT):
        self._layout, self.resident_limit = layout, resident_limit
        for key in ("path", "format", "fingerprint", "payload", "top_k", "value_dtype", "rows", "items", "classes",
                    "ragged"):
            setattr(self, key, getattr(layout, key))
        if os.path.getsize(layout.path) != layout.size:
            raise UserError(f"soft-label cache {layout.path} changed on disk while in use")
        # Copy-on-write: the arrays are writable, so torch.from_numpy shares them without a warning, yet nothing
        # ever reaches the file (and nothing here writes to them).
        self._map = np.memmap(layout.path, dtype=np.uint8, mode="c")
        start = layout.data_start
        self._arrays = {name: self._map[start + s.begin : start + s.end].view(s.np_dtype).reshape(s.shape)
                        for name, s in layout.specs.items()}
        self._offsets = self._arrays.get("offsets")
        self._tensors = {name: torch.from_numpy(a) for name, a in self._arrays.items() if name != "offsets"}
        self._item_bytes = sum(a.itemsize * int(np.prod(a.shape[1:])) for n, a in self._arrays.items() if n != "offsets")
        self._touched = 0
        self._releases = layout.size - start > resident_limit
        # The training hot path, one index_select and nothing else: dense float32 logits, one row each, small enough
        # never to be released.
        values = self._tensors["values"]
        self._fast = values if (self.payload == "dense" and not self.ragged and values.dtype == torch.float32
                                and not self._releases) else None

    def __len__(self) -> int:
        return self.rows

    def __repr__(self) -> str:
        k = f" top-{self.top_k}" if self.top_k else ""
        return (f"SoftLabels({self.path!r}, {self.payload}{k} {self.value_dtype}, rows={self.rows}, "
                f"items={self.items}, classes={self.classes})")

    def __getstate__(self) -> dict:
        # Pickled (e.g. into a DataLoader worker) as where the file is, not as its contents; mapped again on arrival.
        return {"layout": self._layout, "resident_limit": self.resident_limit}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["layout"], state["resident_limit"])

    @property
    def offsets(self) -> torch.Tensor:
        """[rows + 1] int64: row r holds items offsets[r] .. offsets[r+1] - 1 (a copy)."""
        if self._offsets is None:
            return torch.arange(self.rows + 1)
        return torch.from_numpy(np.array(self._offsets))

    def row_items(self, i: int) -> int:
        """How many items row i holds."""
        if not -self.rows <= i < self.rows:
            raise IndexError(f"row {i} of a cache of {self.rows} rows")
        i %= self.rows
        return 1 if self._offsets is None else int(self._offsets[i + 1] - self._offsets[i])

    def _spans(self, idx: torch.Tensor) -> list[tuple[int, int]]:
        rows = idx.tolist()
        bad = [r for r in rows if not -self.rows <= r < self.rows]
        if bad:
            raise IndexError(f"row {bad[0]} of a cache of {self.rows} rows")
        spans = [(int(self._offsets[r % self.rows]), int(self._offsets[r % self.rows + 1])) for r in rows]
        self._account(sum(e - s for s, e in spans) * self._item_bytes, len(spans) * (len(self._tensors) + 1))
        return spans

    def _account(self, nbytes: int, ranges: int) -> None:
        """Count bytes touched (plus fault-around on each side of each range); past resident_limit, release()."""
        if self._releases:
            self._touched += nbytes + ranges * 2 * FAULT_AROUND
            if self._touched >= self.resident_limit:
                self.release()

    def release(self) -> None:
        """Drop this process's mapped pages of the file; they stay in the OS page cache and fault back on use."""
        self._touched = 0
        handle = getattr(self._map, "_mmap", None)
        if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
            handle.madvise(mmap.MADV_DONTNEED)

    def _need(self, payload: str, call: str) -> None:
        if self.payload != payload:
            other = "gather_topk" if self.payload == "topk" else "gather"
            raise ValueError(f"{self.path} holds a {self.payload} payload: {call}() reads {payload} ones; use {other}()")

    def gather(self, rows) -> torch.Tensor | list[torch.Tensor]:
        """The logits of `rows` (0..rows-1) as float32: a [len(rows), classes] tensor when every row holds one item
        (one index_select on the mapped file: the training hot path), else a list of [items_i, classes] tensors.
        Dense payloads only."""
        if self._fast is not None and isinstance(rows, torch.Tensor) and rows.ndim == 1:
            return self._fast.index_select(0, rows)  # a copy; faster than values[idx], which takes the general path
        self._need("dense", "gather")
        idx, values = _index(rows), self._tensors["values"]
        if not self.ragged:
            if self._releases:
                self._account(len(idx) * self._item_bytes, len(idx))
            out = values.index_select(0, idx)
            return out if out.dtype == torch.float32 else out.float()
        return [values[s:e].to(torch.float32, copy=True) for s, e in self._spans(idx)]

    def gather_topk(self, rows) -> tuple:
        """The top-k payload of `rows`: (values float32, indices int64, tail float32), each [len(rows), k] (tail
        [len(rows)]) when every row holds one item, else three lists of per-row tensors [items_i, k] ([items_i]).

        The softmax at T = 1 of the full logits z follows: with lse = logsumexp(values) - log1p(-exp(tail)),
        p[indices] = exp(values - lse), and the other classes share exp(tail) between them.
        """
        self._need("topk", "gather_topk")
        idx, t = _index(rows), self._tensors
        if not self.ragged:
            self._account(len(idx) * self._item_bytes, len(idx) * 3)
            return (t["values"].index_select(0, idx).float(), t["indices"].index_select(0, idx).long(),
                    t["tail"].index_select(0, idx))
        spans = self._spans(idx)
        return ([t["values"][s:e].to(torch.float32, copy=True) for s, e in spans],
                [t["indices"][s:e].long() for s, e in spans],
                [t["tail"][s:e].clone() for s, e in spans])

    def __getitem__(self, rows) -> torch.Tensor | list[torch.Tensor]:
        """cache[idx] == cache.gather(idx) for a LongTensor (or list) of rows; cache[i] is row i alone."""
        if self._fast is not None and isinstance(rows, torch.Tensor) and rows.ndim == 1:
            return self._fast.index_select(0, rows)  # what gather does, without a second call
        if isinstance(rows, int | np.integer) or (isinstance(rows, torch.Tensor) and rows.ndim == 0):
            if not -self.rows <= int(rows) < self.rows:
                raise IndexError(f"row {int(rows)} of a cache of {self.rows} rows")
            return self.gather([int(rows) % self.rows])[0]
        if isinstance(rows, slice):
            rows = range(*rows.indices(self.rows))
        return self.gather(rows)

    def dense(self) -> torch.Tensor:
        """The whole dense payload, read into memory as float32: [rows, classes] when every row holds one item,
        else [items, classes] (rows split by `offsets`). For small splits and diagnostics."""
        self._need("dense", "dense")
        out = torch.from_numpy(np.array(self._arrays["values"], dtype=np.float32))
        if self._releases:
            self.release()
        return out
