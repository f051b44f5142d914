"""Writing a soft-label cache (the v2 layout of cache.py) in streamed chunks: memory holds one chunk, not the split."""

import hashlib
import math
import os
import tempfile
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
import torch

from ..errors import UserError
from ..files import atomic_write
from ..lock import file_lock
from .cache import (BLOCK, FORMAT, NP_DTYPES, ORDER, PAYLOADS, VALUE_DTYPES, _not_finite, _Spec, check_finite,
                    header_bytes, index_dtype)

# Logits per step of the top-k reduction: bounds the temporaries of torch.topk and of the tail (64 MiB of float32).
TOPK_STEP_ELEMENTS = 1 << 24
FLOAT16_MAX = 65504.0

Rows = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]


def _copy_data(src: BinaryIO, dst: BinaryIO, digest: "hashlib._Hash") -> None:
    """Append a spooled tensor's bytes to the cache file, hashing them on the way."""
    src.flush()
    src.seek(0)
    for block in iter(lambda: src.read(BLOCK), b""):
        digest.update(block)
        dst.write(block)


def _flatten(rows: Rows, ndim: int, what: str) -> tuple[torch.Tensor, list[int] | None]:
    """One tensor of the rows' items and each row's item count (None: a tensor given, one item per row)."""
    if isinstance(rows, torch.Tensor | np.ndarray):
        x = torch.as_tensor(rows).detach().cpu()
        if x.ndim != ndim:
            raise ValueError(f"{what} must have {ndim} dimension(s) (one item per row) or be a list, not {tuple(x.shape)}")
        return x, None
    parts = [torch.as_tensor(p).detach().cpu() for p in rows]
    if any(p.ndim != ndim for p in parts):
        raise ValueError(f"each row's {what} must have {ndim} dimension(s), not {[tuple(p.shape) for p in parts]}")
    if len({p.shape[1:] for p in parts}) > 1:
        raise ValueError(f"the rows' {what} differ in width: {sorted({tuple(p.shape[1:]) for p in parts})}")
    return (torch.cat(parts) if parts else torch.empty(0)), [len(p) for p in parts]


def topk_payload(logits: torch.Tensor, k: int, overwrite: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a top-k cache keeps of full logits [..., C]: (the k largest, largest first [..., k]; their classes
    [..., k]; the log of the softmax mass (T = 1) outside them [...], <= 0, -inf when k = C).

    The tail is exact for every item, however little mass lies outside: the logsumexp of the other logits (the k
    classes set to -inf, k writes a row) minus the logsumexp of all, that total itself put together from the two
    parts (``logaddexp(others, logsumexp(top k))``), so the row is read twice (top-k, then the others), not three
    times. `overwrite=True` lets it set the k classes in `logits` itself (a teacher pass that drops its logits
    after): no copy of the row. (The student's tail bucket, which needs a gradient, is `losses.lm.student_buckets`'s.)
    """
    values, indices = torch.topk(logits, k, dim=-1)
    rest = (logits if overwrite else logits.clone()).scatter_(-1, indices, -math.inf)
    others = torch.logsumexp(rest, dim=-1)  # -inf for a row with no class left (k = C) or only -inf ones
    total = torch.logaddexp(others, torch.logsumexp(values, dim=-1))
    return values, indices, (others - total).clamp(max=0.0)


class CacheWriter:
    """Streams a cache to `path`: rows in order through add() or add_topk(); the file appears on a clean exit.

        with CacheWriter(path, fp, payload="topk", top_k=64, value_dtype="float16") as writer:
            for chunk in chunks:
                writer.add(teacher(chunk))  # [rows, classes], or a list of [items_i, classes] per row

    Each tensor's bytes go to an unnamed temp file in the cache's directory (freed however the process ends). On a
    clean exit the header and then the data are written to a named temp file, hashed on the way, and renamed onto
    `path` at once (files.atomic_write); on an exception nothing is left behind and a file already at `path` stays.

    Args:
        payload: "dense" (every logit) or "topk" (per item the top_k largest logits, their classes and the tail).
        value_dtype: "float32" or "float16", of the stored logits (the tail is always float32).
        classes: the items' width, if known before the first add (add_topk needs it).
    """

    def __init__(self, path: str, fingerprint: str, payload: str = "dense", top_k: int | None = None,
                 value_dtype: str = "float32", classes: int | None = None):
        if payload not in PAYLOADS:
            raise ValueError(f"payload must be one of {PAYLOADS}, not {payload!r}")
        if value_dtype not in VALUE_DTYPES:
            raise ValueError(f"value_dtype must be one of {tuple(VALUE_DTYPES)}, not {value_dtype!r}")
        if payload == "topk" and not (isinstance(top_k, int) and top_k >= 1):
            raise ValueError(f"payload 'topk' needs top_k >= 1, not {top_k!r}")
        if payload == "dense" and top_k is not None:
            raise ValueError("top_k is for payload 'topk'")
        if top_k is not None and classes is not None and top_k > classes:
            raise ValueError(f"top_k={top_k} but the logits have {classes} classes")
        self.path, self.fingerprint, self.payload, self.top_k = path, fingerprint, payload, top_k
        self.value_dtype, self.classes = value_dtype, classes
        self.rows = self.items = 0
        self._ragged = self._broken = False
        self._spools: dict[str, BinaryIO] = {}
        self._lock = None

    def __enter__(self) -> "CacheWriter":
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        # One writer per cache file: a second process writing the same file waits here (kdistill.lock). The soft-
        # label pass holds this lock already (it waits before computing, not after), which makes this one a no-op.
        self._lock = file_lock(self.path, f"soft-label cache {self.path}")
        self._lock.__enter__()
        try:
            names = ("offsets", "values") if self.payload == "dense" else ORDER
            self._spools = {name: tempfile.TemporaryFile(dir=directory) for name in names}
            self._spools["offsets"].write(np.zeros(1, dtype=np.int64).data)
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            self._close()

    def _close(self) -> None:
        for spool in self._spools.values():
            spool.close()
        self._spools = {}
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(None, None, None)

    def add(self, logits: Rows) -> None:
        """Append rows of full logits: a [rows, classes] tensor (one item per row) or a list of [items_i, classes]
        tensors (ragged). Top-k caches keep per item the top_k logits and the tail, computed here from all of them."""
        self._guarded(self._add, logits)

    def add_topk(self, values: Rows, indices: Rows, tail: Rows) -> None:
        """Append rows of precomputed top-k outputs (what a teacher pass over a large vocabulary hands over).

        Args:
            values: the top_k largest logits per item, largest first: [rows, k], or a list of [items_i, k].
            indices: their classes, the same shapes as `values`.
            tail: log of the softmax mass (T = 1) outside the top k: [rows], or a list of [items_i]; <= 0.
        """
        self._guarded(self._add_topk, values, indices, tail)

    def _guarded(self, add, *args) -> None:
        # An add that fails may have spooled part of its rows: the file is then never finished, even if the
        # caller catches the error inside the `with` block.
        if not self._spools:
            raise RuntimeError("CacheWriter writes inside `with CacheWriter(...) as writer:`")
        if self._broken:
            raise RuntimeError(f"{self.path}: an earlier add failed; this cache cannot be finished")
        try:
            add(*args)
        except BaseException:
            self._broken = True
            raise

    def _add(self, logits: Rows) -> None:
        x, lengths = _flatten(logits, 2, "logits")
        if lengths is not None and not lengths:
            return
        x = x.float().contiguous()
        self._set_classes(x.shape[1])
        if lengths is None:
            check_finite(x, self.path, self.rows)
        else:
            self._check_items(~torch.isfinite(x).all(dim=1), lengths)
        if self.payload == "dense":
            self._write("values", self._cast(x, lengths))
        else:
            if self.top_k > x.shape[1]:
                raise UserError(f"{self.path}: top_k={self.top_k} but the teacher's logits have {x.shape[1]} classes")
            step = max(1, TOPK_STEP_ELEMENTS // max(x.shape[1], 1))
            for start in range(0, len(x), step):
                self._write_topk(*topk_payload(x[start : start + step], self.top_k), lengths, start)
        self._end_rows(len(x), lengths)

    def _add_topk(self, values: Rows, indices: Rows, tail: Rows) -> None:
        if self.payload != "topk":
            raise ValueError("add_topk writes top-k caches; this one is dense")
        if self.classes is None:
            raise ValueError("add_topk needs the class count: CacheWriter(..., classes=C)")
        (v, lengths), (i, ilengths), (t, tlengths) = (_flatten(values, 2, "values"), _flatten(indices, 2, "indices"),
                                                      _flatten(tail, 1, "tail"))
        if not (lengths == ilengths == tlengths and v.shape == i.shape and v.shape[:1] == t.shape):
            raise ValueError(f"values {tuple(v.shape)}, indices {tuple(i.shape)} and tail {tuple(t.shape)} "
                             "must hold the same rows and items")
        if lengths is not None and not lengths:
            return
        if v.shape[1] != self.top_k:
            raise ValueError(f"values hold {v.shape[1]} logits per item, not top_k={self.top_k}")
        v, t = v.float(), t.float()
        self._check_items(~torch.isfinite(v).all(dim=1) | torch.isnan(t) | (t > 1e-6), lengths,
                          "NaN, inf or a tail above 0")
        out = (i < 0) | (i >= self.classes)
        if out.any():
            raise UserError(f"{self.path}: top-k class index {int(i[out][0])} outside 0..{self.classes - 1}")
        self._write_topk(v, i, t.clamp(max=0.0), lengths, 0)
        self._end_rows(len(v), lengths)

    def _set_classes(self, classes: int) -> None:
        if self.classes is None:
            self.classes = classes
        elif classes != self.classes:
            raise UserError(f"{self.path}: teacher logits have {classes} classes after {self.classes} in earlier rows")

    def _row(self, item: int, lengths: list[int] | None) -> int:
        """The (file-wide) row that holds item number `item` of the current add."""
        return self.rows + (item if lengths is None else int(np.searchsorted(np.cumsum(lengths), item, side="right")))

    def _check_items(self, bad: torch.Tensor, lengths: list[int] | None, what: str = "NaN or inf") -> None:
        """Refuse the rows holding a bad item (bad: one flag per item of the current add), naming the first."""
        if bad.any():
            items = bad.nonzero()[:, 0].numpy()
            rows = items if lengths is None else np.unique(np.searchsorted(np.cumsum(lengths), items, side="right"))
            raise _not_finite(self.path, len(rows), self.rows + int(rows[0]), what)

    def _cast(self, values: torch.Tensor, lengths: list[int] | None, first: int = 0) -> torch.Tensor:
        if self.value_dtype == "float32":
            return values
        over = values.abs().amax(dim=1) > FLOAT16_MAX
        if over.any():
            row = self._row(first + int(over.nonzero()[0]), lengths)
            raise UserError(f"{self.path}: teacher logits of row {row} do not fit float16 (|logit| > {FLOAT16_MAX:g}); "
                            "store them as float32")
        return values.half()

    def _write_topk(self, values: torch.Tensor, indices: torch.Tensor, tail: torch.Tensor,
                    lengths: list[int] | None, first: int) -> None:
        self._write("tail", tail.float())
        wide = index_dtype(self.classes) == "I32"
        self._write("indices", indices.to(torch.int32) if wide else indices.to(torch.int32).numpy().astype(np.uint16))
        self._write("values", self._cast(values.float(), lengths, first))

    def _write(self, name: str, tensor: torch.Tensor | np.ndarray) -> None:
        array = tensor if isinstance(tensor, np.ndarray) else tensor.contiguous().numpy()
        self._spools[name].write(np.ascontiguousarray(array).data)

    def _end_rows(self, items: int, lengths: list[int] | None) -> None:
        counts = np.ones(items, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
        self._write("offsets", torch.from_numpy(self.items + np.cumsum(counts)))
        self.rows, self.items = self.rows + len(counts), self.items + items
        self._ragged |= lengths is not None

    def _finish(self) -> None:
        if self._broken:
            raise RuntimeError(f"{self.path}: an add failed inside the `with` block; the cache is not written")
        classes, k = self.classes or 0, self.top_k or 0
        shapes = {"offsets": ("I64", (self.rows + 1,)), "tail": ("F32", (self.items,)),
                  "indices": (index_dtype(classes), (self.items, k)),
                  "values": (VALUE_DTYPES[self.value_dtype], (self.items, k if self.top_k else classes))}
        specs, end = {}, 0
        # widest element first (ORDER among equals: a stable sort), so that each tensor starts aligned
        for name in sorted(self._spools, key=lambda n: -np.dtype(NP_DTYPES[shapes[n][0]]).itemsize):
            dtype, shape = shapes[name]
            spec = _Spec(dtype, shape, end, end + int(np.prod(shape)) * np.dtype(NP_DTYPES[dtype]).itemsize)
            assert self._spools[name].tell() == spec.end - spec.begin, f"{name}: spooled bytes do not match its shape"
            specs[name], end = spec, spec.end
        meta = {"format": FORMAT, "fingerprint": self.fingerprint, "payload": self.payload, "k": str(k),
                "dtype": self.value_dtype, "rows": str(self.rows), "items": str(self.items), "classes": str(classes),
                "ragged": "true" if self._ragged else "false", "sha256": "0" * 64}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as out:
                placeholder = header_bytes(specs, meta)
                out.write(placeholder)
                digest = hashlib.sha256()
                for name in specs:
                    _copy_data(self._spools[name], out, digest)
                header = header_bytes(specs, {**meta, "sha256": digest.hexdigest()})
                assert len(header) == len(placeholder)
                out.seek(0)
                out.write(header)

        atomic_write(self.path, write)


def write_cache(path: str, logits: Rows, fp: str, payload: str = "dense", top_k: int | None = None,
                value_dtype: str = "float32") -> None:
    """Write `logits` ([rows, classes], or a list of [items_i, classes] per row) as one cache, atomically."""
    with CacheWriter(path, fp, payload=payload, top_k=top_k, value_dtype=value_dtype) as writer:
        writer.add(logits)
