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


def bootstrap_interval(values: list[float], confidence: float = CONFIDENCE, resamples: int = 10_000,
                       seed: int = 0) -> dict:
    """Mean with a percentile-bootstrap interval: for a metric with a bound it must respect (an ECE of 0.094 over
    seeds must not get the t-interval's [-0.004, 0.192]). The interval lies within the values' range, so with few
    seeds it is no wider than they are; same keys as `t_interval`, plus `method`. Seeded: the same values give the
    same interval."""
    x = np.asarray(values, dtype=np.float64)
    out = t_interval(values, confidence)
    out["method"] = "bootstrap"
    if len(x) < 2:
        return out
    means = np.random.default_rng(seed).choice(x, size=(resamples, len(x)), replace=True).mean(axis=1)
    tail = (1 - confidence) / 2
    out["low"], out["high"] = float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
    return out


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


def gap_closed(hard: list[float], soft: list[float], teacher: float, confidence: float = CONFIDENCE) -> dict:
    """Share of the hard-student-to-teacher gap that soft labels close, with a Fieller interval.

    share = mean(hard - soft) / mean(hard - teacher) over paired seeds (the same seed starts both students).
    Fieller's interval for a ratio of means holds every r for which a t-test does not reject
    mean(d - r g) = 0, with d = hard - soft and g = hard - teacher; it is unbounded when the gap itself is
    not clearly above zero (bounds None).
    """
    d = np.asarray(hard, dtype=np.float64) - np.asarray(soft, dtype=np.float64)
    g = np.asarray(hard, dtype=np.float64) - teacher
    n = len(d)
    if g.mean() <= 0:  # the hard student is already as good as the teacher: there is no gap to close
        return {"share": None, "low": None, "high": None, "gap_errors": float(g.mean())}
    out = {"share": float(d.mean() / g.mean()), "low": None, "high": None, "gap_errors": float(g.mean())}
    if n < 2:
        return out
    t2 = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) ** 2
    cov = np.cov(np.stack([d, g]), ddof=1) / n
    a = g.mean() ** 2 - t2 * cov[1, 1]
    b = d.mean() * g.mean() - t2 * cov[0, 1]
    c = d.mean() ** 2 - t2 * cov[0, 0]
    disc = b * b - a * c
    if a > 0 and disc >= 0:
        root = math.sqrt(disc)
        out["low"], out["high"] = float((b - root) / a), float((b + root) / a)
    return out
