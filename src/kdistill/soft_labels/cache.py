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

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserError
from ..files import atomic_write
from .fingerprint import CACHE_FORMAT

logger = logging.getLogger(__name__)


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
