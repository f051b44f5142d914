"""Intervals over seeds: pure functions on lists of numbers (numpy and scipy only, no torch)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> dict:
    """Mean with a two-sided Student-t interval (None bounds for a single value); also std (ddof=1) and n."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "std": None, "low": None, "high": None, "n": len(x), "values": x.tolist()}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * std / math.sqrt(len(x)))
    return {"mean": mean, "std": std, "low": mean - half, "high": mean + half, "n": len(x), "values": x.tolist()}


def paired_difference(a: dict, b: dict, confidence: float = CONFIDENCE) -> dict | None:
    """Mean of a[seed] - b[seed] over the seeds both have, with a paired t-interval; None if none are shared.

    `a` and `b` map seed -> value. Pairing removes what a seed does to both runs (initialisation, data order),
    so the interval is the one for the difference itself, narrower than comparing two separate intervals.
    """
    seeds = sorted(set(a) & set(b), key=str)
    if not seeds:
        return None
    out = t_interval([a[s] - b[s] for s in seeds], confidence)
    out["seeds"] = seeds
    return out
