"""The soft-label cache (kdistill.soft_labels): fingerprints, the v2 file (dense, ragged, top-k), streamed and atomic
writes, verified lazy reads, and v1 files read as they are."""

import hashlib
import json
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import kdistill.soft_labels.cache as cache_module
import kdistill.soft_labels.writer as writer_module
from kdistill.errors import UserError
from kdistill.soft_labels import CacheWriter, SoftLabels, cache_path, fingerprint, hash_files, read_cache, write_cache

FP = "f" * 64


def logits(rows: int, classes: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed)) * scale


def ragged(lengths: list[int], classes: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, classes, generator=g) * 3 for n in lengths]


def rewrite_data(path: Path, change) -> None:
    """Apply change(bytearray of the data) and store a matching sha256: a file that passes the hash check."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = bytearray(raw[8 + n :])
    change(data)
    header["__metadata__"]["sha256"] = hashlib.sha256(data).hexdigest()
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n
    path.write_bytes(raw[:8] + text + bytes(data))


def data_start(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


# --- fingerprint ---------------------------------------------------------------------------------------------------


def test_fingerprint_follows_teacher_files_data_and_settings(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, content in ((a, b"weights a"), (b, b"weights b")):
        d.mkdir()
        (d / "model.safetensors").write_bytes(content)
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\nfine\t1\n")
    base = fingerprint(str(a), str(data), {"split": "train"})
    assert len(base) == 64
    assert fingerprint([str(a)], str(data), {"split": "train"}) == base  # one teacher: str == [str]
    assert fingerprint(str(a), str(data), {"split": "validation"}) != base
    assert fingerprint(str(a), None, {"split": "train"}) != base
    only_b = fingerprint(str(b), str(data), {"split": "train"})
    assert fingerprint([str(a), str(b)], str(data), {"split": "train"}) not in (base, only_b)
    assert fingerprint([str(a), str(b)], str(data), {}) != fingerprint([str(b), str(a)], str(data), {})  # order counts
    data.write_text("sentence\tlabel\nfine\t0\n")
    changed_data = fingerprint(str(a), str(data), {"split": "train"})
    assert changed_data != base
    (a / "model.safetensors").write_bytes(b"weights A")
    assert fingerprint(str(a), str(data), {"split": "train"}) not in (base, changed_data)
    assert cache_path("c", "train", base) == os.path.join("c", f"train-{base[:16]}.safetensors")
    with pytest.raises(ValueError, match="at least one teacher"):
        fingerprint([], None, {})


def test_hash_files_notices_a_changed_file_within_one_process(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"one")
    first = hash_files([str(tmp_path)])
    assert hash_files([str(tmp_path)]) == first  # the remembered digest
    f.write_bytes(b"three")
    changed = hash_files([str(tmp_path)])
    assert changed != first
    f.write_bytes(b"one")
    assert hash_files([str(tmp_path)]) == first


# --- round trips ---------------------------------------------------------------------------------------------------


def test_dense_one_item_per_row_round_trip(tmp_path):
    path = tmp_path / "train.safetensors"
    x = logits(50, 3)
    write_cache(str(path), x, FP)
    labels = read_cache(str(path), FP)
    assert isinstance(labels, SoftLabels)
    assert (len(labels), labels.rows, labels.items, labels.classes) == (50, 50, 50, 3)
    assert (labels.payload, labels.top_k, labels.fingerprint, labels.ragged) == ("dense", None, FP, False)
    idx = torch.tensor([7, 0, 49, 7])
    got = labels.gather(idx)
    assert got.dtype == torch.float32 and torch.equal(got, x[idx])
    assert torch.equal(labels[idx], x[idx])  # what the collator does: cache[idx]
    assert torch.equal(labels[3], x[3]) and torch.equal(labels[-1], x[-1])
    assert torch.equal(labels.dense(), x)
    assert labels.row_items(4) == 1 and torch.equal(labels.offsets, torch.arange(51))
    with pytest.raises(IndexError):
        labels.gather([50])
    # A valid .safetensors file: the library itself reads it.
    with safe_open(str(path), "pt") as fh:
        assert set(fh.keys()) == {"offsets", "values"} and torch.equal(fh.get_tensor("values"), x)
        meta = fh.metadata()
    assert {k: meta[k] for k in ("format", "payload", "k", "dtype", "rows", "items", "classes")} == {
        "format": "kdistill-soft-labels-v2", "payload": "dense", "k": "0", "dtype": "float32", "rows": "50",
        "items": "50", "classes": "3"}
    assert data_start(path) % 64 == 0


def test_dense_float16_stores_half_precision_and_refuses_what_does_not_fit(tmp_path):
    path = tmp_path / "train.safetensors"
    x = logits(20, 4)
    write_cache(str(path), x, FP, value_dtype="float16")
    labels = read_cache(str(path), FP)
    assert labels.value_dtype == "float16"
    assert torch.equal(labels.gather(range(20)), x.half().float())
    assert os.path.getsize(path) - data_start(path) == 21 * 8 + 20 * 4 * 2
    big = x.clone()
    big[13, 2] = 7e4
    with pytest.raises(UserError, match="logits of row 13 do not fit float16"):
        write_cache(str(tmp_path / "big.safetensors"), big, FP, value_dtype="float16")


def test_dense_ragged_round_trip(tmp_path):
    path = tmp_path / "tokens.safetensors"
    rows = ragged([3, 1, 0, 5], 6)
    write_cache(str(path), rows, FP)
    labels = read_cache(str(path), FP)
    assert (labels.rows, labels.items, labels.classes, labels.ragged) == (4, 9, 6, True)
    assert [labels.row_items(i) for i in range(4)] == [3, 1, 0, 5]
    assert labels.offsets.tolist() == [0, 3, 4, 4, 9]
    got = labels.gather(torch.tensor([3, 2, 0]))
    assert isinstance(got, list) and [t.shape for t in got] == [(5, 6), (0, 6), (3, 6)]
    assert all(torch.equal(a, b) for a, b in zip(got, [rows[3], rows[2], rows[0]]))
    assert torch.equal(labels[1], rows[1])
    assert torch.equal(labels.dense(), torch.cat(rows))


def topk_by_hand(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k logits, their classes and log(1 - sum of their softmax probabilities), in float64."""
    values, indices = x.double().topk(k, dim=1)
    p = torch.softmax(x.double(), dim=1)
    return values, indices, torch.log(1 - p.gather(1, indices).sum(dim=1))


@pytest.mark.parametrize("dtype, atol", [("float32", 0.0), ("float16", 5e-3)])
def test_topk_round_trip_with_the_tail_mass(tmp_path, dtype, atol):
    path = tmp_path / "topk.safetensors"
    x = logits(40, 10, scale=1.0)  # mild logits: the tail holds a good share of the mass
    write_cache(str(path), x, FP, payload="topk", top_k=3, value_dtype=dtype)
    labels = read_cache(str(path), FP)
    assert (labels.payload, labels.top_k, labels.classes, labels.value_dtype) == ("topk", 3, 10, dtype)
    want_values, want_indices, want_tail = topk_by_hand(x, 3)
    idx = torch.tensor([5, 39, 0])
    values, indices, tail = labels.gather_topk(idx)
    assert values.dtype == torch.float32 and indices.dtype == torch.long and tail.dtype == torch.float32
    assert torch.equal(indices, want_indices[idx])
    torch.testing.assert_close(values.double(), want_values[idx], atol=atol + 1e-6, rtol=1e-3 if atol else 1e-7)
    torch.testing.assert_close(tail.double(), want_tail[idx], atol=1e-5, rtol=1e-5)  # the tail is float32 always
    assert (tail < -0.05).all() and (tail > -5).all()  # a real share of the mass, not 0 nor everything
    # The docstring's reconstruction: p[indices] = exp(values - lse), lse = logsumexp(values) - log1p(-exp(tail)).
    lse = torch.logsumexp(values, dim=1) - torch.log1p(-torch.exp(tail))
    p = torch.softmax(x[idx], dim=1).gather(1, indices)
    torch.testing.assert_close(torch.exp(values - lse[:, None]), p, atol=3e-3 if atol else 1e-5, rtol=0)
    with pytest.raises(ValueError, match="use gather_topk"):
        labels.gather(idx)
    with pytest.raises(ValueError, match="use gather_topk"):
        labels.dense()


def test_topk_tail_keeps_a_tiny_mass_that_one_minus_the_sum_would_lose(tmp_path):
    path = tmp_path / "topk.safetensors"
    x = torch.tensor([[30.0, 0.0, 0.0, 0.0]])  # outside the top 1: 3 e^-30 of the mass (1 - p_top rounds to 0)
    write_cache(str(path), x, FP, payload="topk", top_k=1)
    tail = read_cache(str(path), FP).gather_topk([0])[2]
    assert float(tail) == pytest.approx(np.log(3.0) - 30.0, abs=1e-4)


def test_topk_tail_is_within_1e_4_of_float64_at_every_share_of_the_mass():
    from kdistill.soft_labels.writer import topk_payload

    torch.manual_seed(0)
    # 1,000 classes; scales from flat (most mass outside the top 8) to peaked (almost none)
    x = torch.cat([torch.randn(200, 1000) * s for s in (0.5, 2.0, 4.0, 6.0, 10.0, 30.0)]) + 7.0
    kept = x.clone()
    values, indices, tail = topk_payload(x, 8)
    assert torch.equal(x, kept)  # the caller's logits are left as they were
    want_values, want_indices = x.double().topk(8, dim=1)
    # in float64, over the other logits (1 - sum p would round to 0 for the peaked rows even in float64)
    want_tail = x.double().scatter(1, want_indices, float("-inf")).logsumexp(1) - x.double().logsumexp(1)
    mass = want_tail.exp()
    assert (mass > 0.5).any() and ((mass > 0.01) & (mass < 0.1)).any() and (mass < 1e-10).any()
    assert torch.equal(values.double(), want_values) and torch.equal(indices, want_indices)
    assert ((tail.double() - want_tail).abs() / want_tail.abs().clamp(min=1.0)).max() < 1e-4
    # a teacher pass that drops its logits lets it mask them in place: the same payload, no copy
    same = topk_payload(x, 8, overwrite=True)
    assert all(torch.equal(a, b) for a, b in zip(same, (values, indices, tail)))
    assert torch.isinf(x.gather(1, indices)).all()


def test_topk_tail_is_minus_inf_where_no_class_is_left():
    from kdistill.soft_labels.writer import topk_payload

    x = torch.randn(3, 5)
    x[1, 2:] = float("-inf")  # only two classes can take mass
    _, _, tail = topk_payload(x, 5)
    assert torch.isneginf(tail).all()
    _, _, tail = topk_payload(x, 2)
    assert torch.isneginf(tail[1]) and torch.isfinite(tail[[0, 2]]).all()


def _index_dtype_on_disk(path) -> str:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(n))["indices"]["dtype"]


@pytest.mark.parametrize("classes, dtype", [(300, "U16"), (65_536, "U16"), (70_001, "I32")])
def test_topk_indices_take_uint16_up_to_65536_classes_and_round_trip(tmp_path, classes, dtype):
    path = tmp_path / "topk.safetensors"
    torch.manual_seed(0)
    x = torch.randn(7, classes)
    x[0, classes - 1] = 50.0  # the last class in a top-k: the largest index each dtype must hold
    # float32 values after 7 x 3 two-byte indices would start misaligned: values are written before them
    write_cache(str(path), x, FP, payload="topk", top_k=3, value_dtype="float32")
    assert _index_dtype_on_disk(path) == dtype
    values, indices, tail = read_cache(str(path), FP).gather_topk(range(7))
    want_values, want_indices = x.topk(3, dim=1)
    assert indices.dtype == torch.long and torch.equal(indices, want_indices) and int(indices[0, 0]) == classes - 1
    assert torch.equal(values, want_values)


def test_a_topk_cache_written_with_int32_indices_for_a_small_vocabulary_is_still_read(tmp_path, monkeypatch):
    path = tmp_path / "old.safetensors"
    x = logits(5, 10)
    monkeypatch.setattr(writer_module, "index_dtype", lambda classes: "I32")  # as caches were written before U16
    write_cache(str(path), x, FP, payload="topk", top_k=4)
    monkeypatch.undo()
    assert _index_dtype_on_disk(path) == "I32"
    assert torch.equal(read_cache(str(path), FP).gather_topk(range(5))[1], x.topk(4, dim=1).indices)


def test_topk_with_k_equal_to_classes_is_the_dense_cache(tmp_path):
    x = logits(12, 5)
    write_cache(str(tmp_path / "k.safetensors"), x, FP, payload="topk", top_k=5)
    values, indices, tail = read_cache(str(tmp_path / "k.safetensors"), FP).gather_topk(range(12))
    assert torch.equal(torch.empty_like(x).scatter_(1, indices, values), x)
    assert torch.isneginf(tail).all()  # no mass outside: log 0


def test_topk_ragged_and_precomputed_topk_round_trip(tmp_path):
    rows = ragged([2, 0, 4], 7)
    path = tmp_path / "a.safetensors"
    write_cache(str(path), rows, FP, payload="topk", top_k=2)
    values, indices, tail = read_cache(str(path), FP).gather_topk([2, 1])
    want_values, want_indices, want_tail = topk_by_hand(rows[2], 2)
    assert [len(v) for v in values] == [4, 0] and [len(t) for t in tail] == [4, 0]
    assert torch.equal(indices[0], want_indices) and torch.equal(values[0].double(), want_values)
    torch.testing.assert_close(tail[0].double(), want_tail, atol=1e-5, rtol=1e-5)
    # The same rows handed over as top-k (what a big-vocabulary teacher pass does) make the same file.
    other = tmp_path / "b.safetensors"
    tops = [topk_by_hand(r, 2) for r in rows]
    with CacheWriter(str(other), FP, payload="topk", top_k=2, classes=7) as writer:
        writer.add_topk([v.float() for v, _, _ in tops], [i for _, i, _ in tops], [t.float() for _, _, t in tops])
    got = read_cache(str(other), FP).gather_topk([2])
    assert torch.equal(got[0][0], values[0]) and torch.equal(got[1][0], indices[0])
    torch.testing.assert_close(got[2][0], tail[0], atol=2e-5, rtol=1e-5)  # float64 by hand vs topk_payload's float32


def test_add_topk_refuses_bad_classes_and_tails(tmp_path):
    path = tmp_path / "a.safetensors"
    v, i = torch.zeros(3, 2), torch.tensor([[0, 1], [2, 3], [4, 5]])
    with pytest.raises(UserError, match="class index 5 outside 0..4"), \
            CacheWriter(str(path), FP, payload="topk", top_k=2, classes=5) as writer:
        writer.add_topk(v, i, torch.full((3,), -1.0))
    with pytest.raises(UserError, match=r"NaN, inf or a tail above 0 for 1 row\(s\), first at row 2"), \
            CacheWriter(str(path), FP, payload="topk", top_k=2, classes=6) as writer:
        writer.add_topk(v, i, torch.tensor([-1.0, -2.0, 0.5]))
    assert os.listdir(tmp_path) == []


# --- writing: chunks, failures, bad values -------------------------------------------------------------------------


@pytest.mark.parametrize("payload, top_k, dtype", [("dense", None, "float32"), ("dense", None, "float16"),
                                                   ("topk", 3, "float16")])
def test_chunked_writes_equal_one_write_byte_for_byte(tmp_path, monkeypatch, payload, top_k, dtype):
    x = logits(100, 8)
    write_cache(str(tmp_path / "one.safetensors"), x, FP, payload=payload, top_k=top_k, value_dtype=dtype)
    monkeypatch.setattr(writer_module, "TOPK_STEP_ELEMENTS", 8 * 7)  # top-k in steps of 7 items within an add
    with CacheWriter(str(tmp_path / "chunks.safetensors"), FP, payload, top_k, dtype) as writer:
        for start in range(0, 100, 33):
            writer.add(x[start : start + 33])
    assert (tmp_path / "chunks.safetensors").read_bytes() == (tmp_path / "one.safetensors").read_bytes()
    # Ragged rows too: written in two adds or in one, the same file.
    rows = ragged([3, 0, 2, 6, 1], 8)
    write_cache(str(tmp_path / "r1.safetensors"), rows, FP, payload=payload, top_k=top_k, value_dtype=dtype)
    with CacheWriter(str(tmp_path / "r2.safetensors"), FP, payload, top_k, dtype) as writer:
        writer.add(rows[:2])
        writer.add(rows[2:])
    assert (tmp_path / "r2.safetensors").read_bytes() == (tmp_path / "r1.safetensors").read_bytes()


def test_failed_write_leaves_nothing_and_keeps_the_old_cache(tmp_path):
    path = tmp_path / "train.safetensors"
    old = logits(10, 3)
    write_cache(str(path), old, FP)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="teacher crashed"), CacheWriter(str(path), FP) as writer:
        writer.add(logits(10, 3, seed=1))
        raise RuntimeError("teacher crashed")
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["train.safetensors"]
    assert torch.equal(read_cache(str(path), FP).dense(), old)


KILLED_WRITER = """
import sys, time, torch
import kdistill.soft_labels.writer as w
from kdistill.soft_labels import CacheWriter
copy = w._copy_data
def stall(src, dst, digest):
    copy(src, dst, digest)
    dst.flush()
    open(sys.argv[2], "w").close()
    time.sleep(600)
w._copy_data = stall
with CacheWriter(sys.argv[1], "f" * 64) as writer:
    writer.add(torch.randn(1000, 3))
"""


def test_killed_write_keeps_the_old_cache_and_leaves_only_a_named_temp_file(tmp_path):
    path = tmp_path / "train.safetensors"
    old = logits(10, 3)
    write_cache(str(path), old, FP)
    before = path.read_bytes()
    marker = tmp_path.parent / f"{tmp_path.name}-stalled"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert path.read_bytes() == before
    assert torch.equal(read_cache(str(path), FP).dense(), old)
    # The spooled tensors were unnamed files, gone with the process; the half-copied file never took the name. The
    # writer's lock file (kdistill.lock) stays too, naming it; the kernel released the lock, so the next writer
    # takes it over.
    held = tmp_path / "train.safetensors.lock"
    assert json.loads(held.read_text())["pid"] == child.pid
    (temp,) = [p for p in tmp_path.iterdir() if p not in (path, held)]
    assert temp.name.startswith(".tmp-") and temp.stat().st_size < 1000 * 3 * 4
    write_cache(str(path), old, FP)
    assert not held.exists()


def test_write_cache_refuses_nan_and_inf(tmp_path):
    path = tmp_path / "train.safetensors"
    for bad in (float("nan"), float("inf")):
        with pytest.raises(UserError, match=r"NaN or inf for 1 row\(s\), first at row 1"):
            write_cache(str(path), torch.tensor([[0.0, 1.0], [bad, 0.0], [1.0, 0.0]]), FP)
    assert not path.exists()
    assert os.listdir(tmp_path) == []  # no temp file left behind either


def test_streamed_write_names_the_first_bad_row_of_the_whole_file(tmp_path):
    rows = ragged([2, 3, 1, 2], 4)
    rows[1][2, 0] = float("nan")
    rows[3][0, 1] = float("-inf")
    with pytest.raises(UserError, match=r"NaN or inf for 2 row\(s\), first at row 4"), \
            CacheWriter(str(tmp_path / "a.safetensors"), FP, payload="topk", top_k=2) as writer:
        writer.add(logits(3, 4))
        writer.add(rows)  # rows 3..6 of the file
    assert os.listdir(tmp_path) == []


def test_writer_refuses_changing_widths_and_use_outside_with(tmp_path):
    with pytest.raises(UserError, match="have 5 classes after 4 in earlier rows"), \
            CacheWriter(str(tmp_path / "a.safetensors"), FP) as writer:
        writer.add(logits(2, 4))
        writer.add(logits(2, 5))
    with pytest.raises(RuntimeError, match="inside `with CacheWriter"):
        CacheWriter(str(tmp_path / "b.safetensors"), FP).add(logits(2, 4))
    with pytest.raises(UserError, match="top_k=5 but the teacher's logits have 4 classes"):
        write_cache(str(tmp_path / "c.safetensors"), logits(2, 4), FP, payload="topk", top_k=5)
    assert os.listdir(tmp_path) == []


# --- reading: verification, v1, laziness ---------------------------------------------------------------------------


def test_read_cache_detects_a_changed_byte_and_other_inputs(tmp_path, caplog):
    path = tmp_path / "train.safetensors"
    x = logits(30, 3)
    write_cache(str(path), x, FP)
    caplog.set_level(logging.INFO, logger="kdistill")
    assert read_cache(str(path), "0" * 64) is None  # another fingerprint: not ours, recompute
    assert f"soft-label cache {path} was made from other inputs; recomputing" in caplog.messages
    assert read_cache(str(tmp_path / "absent.safetensors"), FP) is None
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x01  # a low mantissa bit of one logit
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"does not match its fingerprint \(contents changed\); delete it to recompute"):
        read_cache(str(path), FP)


def test_read_cache_refuses_what_a_matching_hash_does_not_excuse(tmp_path):
    path = tmp_path / "train.safetensors"
    write_cache(str(path), ragged([2, 3, 1], 4), FP)
    start = 4 * 8  # values begin after the 4 offsets

    def nan_in_row_1(data: bytearray) -> None:  # item 3 of 6 lies in row 1
        data[start + (3 * 4 + 2) * 4 : start + (3 * 4 + 3) * 4] = np.float32("nan").tobytes()

    rewrite_data(path, nan_in_row_1)
    with pytest.raises(UserError, match=r"NaN or inf for 1 row\(s\), first at row 1"):
        read_cache(str(path), FP)
    write_cache(str(path), ragged([2, 3, 1], 4), FP)
    rewrite_data(path, lambda data: data.__setitem__(slice(16, 24), np.int64(1).tobytes()))  # offsets 0, 2, 1, 6
    with pytest.raises(UserError, match="its row offsets are out of order"):
        read_cache(str(path), FP)


def test_read_cache_unreadable_file(tmp_path):
    path = tmp_path / "train.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="is unreadable .*; delete it to recompute"):
        read_cache(str(path), FP)
    write_cache(str(path), logits(4, 2), FP)
    path.write_bytes(path.read_bytes()[:-4])  # cut short
    with pytest.raises(UserError, match="is unreadable .*describes .* bytes but the file has"):
        read_cache(str(path), FP)


def write_v1(path: Path, x: torch.Tensor, fp: str = FP) -> None:
    """A cache as kdistill wrote it before format v2."""
    meta = {"format": "kdistill-soft-labels-v1", "fingerprint": fp, "rows": str(len(x)),
            "sha256": hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()}
    save_file({"logits": x}, str(path), metadata=meta)


def test_a_v1_cache_is_read_as_it_is(tmp_path, caplog):
    path = tmp_path / "train.safetensors"
    x = logits(25, 3)
    write_v1(path, x)
    caplog.set_level(logging.INFO, logger="kdistill")
    labels = read_cache(str(path), FP)
    assert [m for m in caplog.messages if "v1" in m] == [
        f"soft-label cache {path} is a v1 cache (dense, one row each); read as it is"]
    assert (labels.format, labels.payload, labels.rows, labels.items, labels.classes, labels.ragged) == (
        "kdistill-soft-labels-v1", "dense", 25, 25, 3, False)
    idx = torch.tensor([24, 3])
    assert torch.equal(labels[idx], x[idx]) and torch.equal(labels.dense(), x) and labels.row_items(0) == 1
    assert isinstance(labels._arrays["values"], np.memmap)
    write_v1(path, x + 1.0)
    raw = path.read_bytes()
    write_v1(path, x)
    path.write_bytes(path.read_bytes()[: data_start(path)] + raw[data_start(path) :])  # other logits, same hash
    with pytest.raises(UserError, match=r"does not match its fingerprint \(contents changed\)"):
        read_cache(str(path), FP)


def test_read_cache_refuses_nan_in_a_v1_file_even_with_matching_hash(tmp_path):
    path = tmp_path / "train.safetensors"
    write_v1(path, torch.tensor([[0.0, 1.0], [1.0, float("nan")]]))
    with pytest.raises(UserError, match=r"NaN or inf for 1 row\(s\), first at row 1"):
        read_cache(str(path), FP)


def test_reading_maps_the_file_and_verifies_it_in_blocks(tmp_path, monkeypatch):
    path = tmp_path / "train.safetensors"
    x = logits(4000, 16)
    write_cache(str(path), x, FP)
    reads = []

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def read(self, n=-1):
            reads.append(n)
            return self.fh.read(n)

    monkeypatch.setattr(cache_module, "BLOCK", 4096)
    monkeypatch.setattr(cache_module, "open", lambda *a, **k: Spy(open(*a, **k)), raising=False)
    labels = read_cache(str(path), FP)
    data_bytes = os.path.getsize(path) - data_start(path)
    assert 0 < max(reads) <= 4096 and sum(n for n in reads if n <= 4096) >= data_bytes  # streamed, not read whole
    assert isinstance(labels._arrays["values"], np.memmap) and labels._arrays["values"].filename == str(path)
    row = labels.gather(torch.tensor([1234]))
    row += 1.0  # a copy: the cache is not changed through it
    assert torch.equal(labels.gather(torch.tensor([1234])), x[1234:1235])


def test_pages_are_released_past_the_resident_limit_and_reads_stay_right(tmp_path, monkeypatch):
    path = tmp_path / "tokens.safetensors"
    rows = ragged([50] * 40, 32)
    write_cache(str(path), rows, FP, payload="topk", top_k=8, value_dtype="float16")
    assert os.path.getsize(path) > 64 << 10
    labels = read_cache(str(path), FP, resident_limit=64 << 10)
    released = []
    release = SoftLabels.release
    monkeypatch.setattr(SoftLabels, "release", lambda self: released.append(1) or release(self))
    want = [topk_by_hand(r, 8) for r in rows]
    for _ in range(3):
        for r in torch.randperm(40).tolist():
            values, indices, _ = labels.gather_topk([r])
            assert torch.equal(indices[0], want[r][1])
            torch.testing.assert_close(values[0].double(), want[r][0], atol=5e-3, rtol=1e-3)
    assert len(released) == 120  # each read counts 4 ranges of 128 KiB fault-around, over the 64 KiB limit
    small = read_cache(str(path), FP)  # the whole file fits the default limit: never released
    small.gather_topk(range(40))
    assert len(released) == 120 and not small._releases


def test_a_pickled_cache_carries_its_path_not_its_contents(tmp_path):
    path = tmp_path / "train.safetensors"
    x = logits(5000, 8)
    write_cache(str(path), x, FP)
    blob = pickle.dumps(read_cache(str(path), FP))
    assert len(blob) < 4000 < os.path.getsize(path)
    again = pickle.loads(blob)
    assert torch.equal(again[torch.tensor([4999, 17])], x[[4999, 17]])


def test_an_add_that_failed_inside_the_with_block_leaves_no_file(tmp_path):
    path = tmp_path / "a.safetensors"
    big = logits(6, 4)
    big[4, 0] = 7e4  # the largest logit of row 4, too large for float16
    with pytest.raises(RuntimeError, match="an add failed inside the `with` block"):
        with CacheWriter(str(path), FP, payload="topk", top_k=2, value_dtype="float16") as writer:
            writer.add(logits(3, 4))
            with pytest.raises(UserError, match="logits of row 7 do not fit float16"):
                writer.add(big)  # caught here: the caller goes on
            with pytest.raises(RuntimeError, match="an earlier add failed"):
                writer.add(logits(3, 4))
    assert os.listdir(tmp_path) == []


def test_a_run_finds_and_reads_the_v1_cache_an_earlier_kdistill_made(tmp_path, tiny_bert, monkeypatch, caplog):
    """kdistill before format v2 filed a split's cache under sha256(v1, teacher files, data bytes, settings); a run
    with the same inputs reads that file as it is (one log line) and runs no teacher."""
    import kdistill
    from kdistill.soft_labels import produce
    from conftest import tiny_run_values

    config = kdistill.make_config(tiny_run_values(tmp_path, tiny_bert, teacher_train=False, max_train_samples=40))
    data = config.data
    settings = {"split": "train", "source": data.train_file, "text_column": data.text_column,
                "text_pair_column": None, "max_length": data.max_length, "limit": 40}
    old = hashlib.sha256(b"kdistill-soft-labels-v1")  # the v1 formula, written out here as v1 wrote it
    old.update(hash_files([tiny_bert]).encode())
    old.update(hash_files([data.train_file]).encode())
    old.update(json.dumps(settings, sort_keys=True, default=str).encode())
    fp = old.hexdigest()
    x = logits(40, 2)
    (tmp_path / "soft_labels").mkdir()
    write_v1(tmp_path / "soft_labels" / f"train-{fp[:16]}.safetensors", x, fp)
    monkeypatch.setattr(produce, "teacher_pass", lambda *a, **k: pytest.fail("the v1 cache was not read"))
    with caplog.at_level(logging.INFO):
        got = kdistill.make_soft_labels(config, ("train",))["train"]
    assert torch.equal(got, x)
    assert any(m.endswith("is a v1 cache (dense, one row each); read as it is") for m in caplog.messages)


def test_splits_laid_end_to_end_are_read_by_their_rows(tmp_path):
    """The collator's one index space (train, then transfer, then validation) over lazily read caches."""
    from kdistill.soft_labels.produce import ConcatSources

    a, b = logits(5, 3), logits(4, 3) + 10.0
    write_cache(str(tmp_path / "a.safetensors"), a, FP)
    write_cache(str(tmp_path / "b.safetensors"), b, FP)
    both = ConcatSources([read_cache(str(tmp_path / "a.safetensors"), FP), read_cache(str(tmp_path / "b.safetensors"), FP)])
    idx = torch.tensor([7, 0, 4, 5, 8, 2])
    assert len(both) == 9
    assert torch.equal(both[idx], torch.cat([a, b])[idx])
    assert torch.equal(ConcatSources([a, b])[idx], torch.cat([a, b])[idx])  # in memory: concatenated once


def test_per_token_outputs_come_back_per_row_cut_to_each_rows_length():
    from kdistill.soft_labels.produce import predict_logits

    class PerToken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, input_ids, attention_mask):
            return {"logits": torch.stack([input_ids.float(), -input_ids.float()], -1) * self.w}

    rows = [{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1]}, {"input_ids": [4], "attention_mask": [1]},
            {"input_ids": [5, 6], "attention_mask": [1, 1]}]

    def pad(batch):
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in batch])
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}

    out = predict_logits(PerToken(), rows, pad, batch_size=2)  # batches of unequal width: [4], [5, 6] then [1, 2, 3]
    assert isinstance(out, list) and [tuple(o.shape) for o in out] == [(3, 2), (1, 2), (2, 2)]
    assert out[0][:, 0].tolist() == [1.0, 2.0, 3.0] and out[2][:, 1].tolist() == [-5.0, -6.0]
    class PerRow(PerToken):
        def forward(self, input_ids, attention_mask):
            return {"logits": super().forward(input_ids, attention_mask)["logits"][:, 0]}

    flat = predict_logits(PerRow(), rows, pad, batch_size=2)
    assert flat.shape == (3, 2) and flat[:, 0].tolist() == [1.0, 4.0, 5.0]  # one vector per row: one tensor


def test_round_robin_shares_are_put_back_in_row_order():
    from kdistill.soft_labels.produce import _interleave

    shares = [torch.tensor([[0.0], [3.0], [6.0]]), torch.tensor([[1.0], [4.0]]), torch.tensor([[2.0], [5.0]])]
    assert _interleave(shares, 3).flatten().tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_gathered_chunks_with_no_rows_join_to_nothing_and_top_k_chunks_join_row_by_row():
    from kdistill.soft_labels.produce import TopK, TopKRowList, _interleave, _joined

    assert _interleave([[], []], 2) == []  # a packed split's short last chunk, on every process
    a = TopK([torch.ones(2, 3)], [torch.zeros(2, 3, dtype=torch.long)], [torch.zeros(2)], 10)
    b = TopK([torch.full((2, 3), 2.0)], [torch.ones(2, 3, dtype=torch.long)], [torch.ones(2)], 10)
    dealt = _interleave([a, b, []], 3)  # the third process had no block in this chunk
    assert isinstance(dealt, TopK) and [float(v[0, 0]) for v in dealt.values] == [1.0, 2.0]
    joined = _joined([dealt, _interleave([[], [], []], 3)])
    assert isinstance(joined, TopKRowList) and len(joined) == 2 and joined.classes == 10 and joined.top_k == 3
    assert joined.items == 4 and float(joined[torch.tensor([1])][0][0][0, 0]) == 2.0
