"""The teacher's outputs as data: one inference pass, stored on disk under a fingerprint, reused by later runs.

A cache file is `<cache_dir>/<split>-<fingerprint[:16]>.safetensors` holding `logits` ([rows, ...]; any shape per
row, so per-token logits fit later) and metadata: the full fingerprint, the row count and a SHA-256 of the
logits' bytes. The fingerprint covers the teacher's weight and tokenizer files, the data file's bytes, the rows
selected and the tokenisation settings, so it can be checked without loading the teacher.
"""

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import UserError
from .files import atomic_write

logger = logging.getLogger(__name__)

CACHE_FORMAT = "kdistill-soft-labels-v1"
_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


_HASH_MEMO: dict[tuple, str] = {}


def hash_files(paths: Iterable[str]) -> str:
    """SHA-256 over the bytes of files (directories: their model/tokenizer files, sorted by name).

    A process remembers the digest of files it has hashed, keyed by each file's path, size, modification time and
    inode, so a sweep that checks the same 91 MB teacher for every split of every cell reads it once.
    """
    parts: list[tuple[str, str | None]] = []  # (hub name, None) or (basename, file path)
    for path in paths:
        if path is None:
            continue
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.endswith(_HASHED_SUFFIXES) and n != "training_args.bin")
            parts += [(n, os.path.join(path, n)) for n in names]
        elif os.path.isfile(path):
            parts.append((os.path.basename(path), path))
        else:
            # A hub name: its identity is the name (online users get the revision the hub serves).
            parts.append((path, None))
    key = []
    for name, file in parts:
        if file is None:
            key.append((name,))
        else:
            st = os.stat(file)
            key.append((name, os.path.realpath(file), st.st_size, st.st_mtime_ns, st.st_ino))
    key = tuple(key)
    if key in _HASH_MEMO:
        return _HASH_MEMO[key]
    h = hashlib.sha256()
    for name, file in parts:
        h.update(name.encode())
        if file is None:
            continue
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    _HASH_MEMO[key] = h.hexdigest()
    return _HASH_MEMO[key]


def fingerprint(teacher_dir: str, data_file: str | None, settings: dict) -> str:
    """Fingerprint of what produces a split's soft labels: teacher files + data bytes + settings (JSON-able)."""
    h = hashlib.sha256(CACHE_FORMAT.encode())
    h.update(hash_files([teacher_dir]).encode())
    h.update(hash_files([data_file]).encode() if data_file else b"")
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _content_hash(logits: torch.Tensor) -> str:
    return hashlib.sha256(logits.contiguous().numpy().tobytes()).hexdigest()


def cache_path(cache_dir: str, split: str, fp: str) -> str:
    return os.path.join(cache_dir, f"{split}-{fp[:16]}.safetensors")


def check_finite(logits: torch.Tensor, source: str) -> None:
    bad = (~torch.isfinite(logits)).reshape(len(logits), -1).any(dim=1)
    if bad.any():
        first = int(bad.nonzero()[0])
        raise UserError(f"{source}: teacher logits hold NaN or inf for {int(bad.sum())} row(s), first at row {first}")


def write_cache(path: str, logits: torch.Tensor, fp: str) -> None:
    """Write atomically: a temp file in the same directory, then rename, so readers never see a partial file."""
    logits = logits.detach().to(torch.float32).contiguous().cpu()
    check_finite(logits, path)
    meta = {"format": CACHE_FORMAT, "fingerprint": fp, "rows": str(len(logits)), "sha256": _content_hash(logits)}
    atomic_write(path, lambda tmp: save_file({"logits": logits}, tmp, metadata=meta))


def read_cache(path: str, fp: str) -> torch.Tensor | None:
    """The cached logits if `path` holds them under fingerprint `fp`; None if absent or made by something else.

    Raises UserError when the file claims the fingerprint but its contents do not match it (a corrupt or edited file).
    """
    if not os.path.exists(path):
        return None
    try:
        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != fp:
                logger.info("soft-label cache %s was made from other inputs; recomputing", path)
                return None
            logits = fh.get_tensor("logits")
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"soft-label cache {path} is unreadable ({str(err).splitlines()[0]}); delete it to recompute") from None
    if str(len(logits)) != meta.get("rows") or _content_hash(logits) != meta.get("sha256"):
        raise UserError(f"soft-label cache {path} does not match its fingerprint (contents changed); delete it to recompute")
    check_finite(logits, path)
    return logits


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    rows: list[dict],
    collate: Callable[[list[dict]], dict],
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run a model over tokenised rows in length-sorted batches (little padding); logits come back in row order.

    Args:
        rows: dicts with the model's input fields (input_ids, attention_mask, ...), unpadded.
        collate: pads a list of rows into a batch of tensors.
        progress: called with the number of rows done after each batch.
    """
    model.eval()
    device = next(model.parameters()).device
    # Text rows go shortest first, so each batch pads little; other rows keep their order.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].get("input_ids", ())))
    out: torch.Tensor | None = None
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in chunk]).items()}
        outputs = model(**batch)
        logits = (outputs["logits"] if isinstance(outputs, dict) else outputs[0]).float().cpu()
        if out is None:
            out = torch.empty((len(rows), *logits.shape[1:]), dtype=torch.float32)
        out[torch.tensor(chunk)] = logits
        if progress is not None:
            progress(len(chunk))
    assert out is not None, "no rows to label"
    return out
