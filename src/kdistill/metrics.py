"""Evaluation metrics for classifiers and their teachers.

Pure functions that accept numpy arrays or torch tensors. Logits are
``[..., C]``: every leading position is one item (a row, a word, a token), and
items are flattened to ``[N, C]``. Labels have the items' shape, integers where
-100 marks an unlabelled item (only ``soft_label_stats`` and
``classification_metrics`` filter those out; the latter also takes an item mask).
Everything is computed in float64 numpy and returned as plain Python floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score

IGNORE_INDEX = -100


def _np(x: Any) -> np.ndarray:
    """Convert a tensor or array-like to numpy (bf16 tensors go through float32)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()  # numpy has no bfloat16
        return x.numpy()
    return np.asarray(x)


def _logits(x: Any) -> np.ndarray:
    """Logits as float64 ``[items, C]`` (leading axes flattened)."""
    arr = _np(x).astype(np.float64)
    if arr.ndim < 2:
        raise ValueError(f"expected logits of shape [..., C], got {arr.shape}")
    return arr.reshape(-1, arr.shape[-1])


def _log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits / temperature
    # Subtracting the row max keeps exp() from overflowing.
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax over the last axis of ``logits / temperature``."""
    return np.exp(_log_softmax(_np(logits).astype(np.float64), temperature))


def _preds(preds_or_logits: Any) -> np.ndarray:
    """Predicted classes, flattened over items: float input of 2+ dimensions is logits (argmaxed), ints are classes."""
    arr = _np(preds_or_logits)
    if arr.ndim >= 2 and np.issubdtype(arr.dtype, np.floating):
        arr = arr.argmax(axis=-1)
    return arr.reshape(-1)


def accuracy(preds_or_logits: Any, labels: Any) -> float:
    """Share of items whose prediction equals the label (2-D input is argmaxed first)."""
    preds, labels = _preds(preds_or_logits), _np(labels).reshape(-1)
    if labels.size == 0:
        return float("nan")
    return float((preds == labels).mean())


def macro_f1(logits: Any, labels: Any, num_labels: int | None = None) -> float:
    """Macro-averaged F1; with ``num_labels`` every class counts, even if absent."""
    preds, labels = _preds(logits), _np(labels).reshape(-1)
    classes = list(range(num_labels)) if num_labels is not None else None
    return float(f1_score(labels, preds, labels=classes, average="macro", zero_division=0))


def agreement(student_logits: Any, teacher_logits: Any) -> float:
    """Share of items where student and teacher argmaxes match."""
    s, t = _preds(student_logits), _preds(teacher_logits)
    if s.size == 0:
        return float("nan")
    return float((s == t).mean())


def disagreement_rate(logits: Sequence[Any]) -> float:
    """Share of items on which several models' top-1 predictions are not all the same (0.0 for one model).

    A vote or mixture of models can differ from its members only where they disagree, so this bounds where an
    ensemble can gain (the diversity of Dietterich 2000, "Ensemble Methods in Machine Learning").

    Args:
        logits: one ``[..., C]`` logits array (or array of predicted classes) per model, over the same items.
    """
    preds = [_preds(x) for x in logits]
    if not preds or preds[0].size == 0:
        return float("nan")
    if any(p.shape != preds[0].shape for p in preds):
        raise ValueError(f"models give predictions of shapes {[p.shape for p in preds]}; they must cover the same items")
    return float((np.stack(preds) != preds[0]).any(axis=0).mean())


def disagreement_margins(reference_logits: Any, other_logits: Any) -> dict[str, float | int]:
    """Where two models' argmaxes differ, how close the reference was to a tie.

    The margin of a row is the reference's top-1 minus its top-2 probability. Returns the number of rows that
    differ, the largest reference margin among them (0.0 when none differ), and how many rows of the whole set have
    a margin at most that large: when every disagreement sits on a near-tie, `rows_within` says how many rows are
    that fragile at all.
    """
    ref = _logits(reference_logits)
    probs = np.sort(softmax(ref), axis=-1)
    margins = probs[:, -1] - probs[:, -2] if ref.shape[-1] > 1 else np.ones(len(ref))
    differ = _preds(ref) != _preds(other_logits)
    largest = float(margins[differ].max()) if differ.any() else 0.0
    return {"rows": int(len(ref)), "disagreements": int(differ.sum()), "largest_margin": largest,
            "rows_within": int((margins <= largest).sum()) if differ.any() else 0}


def _kl_per_item(student_logits: Any, teacher_logits: Any, temperature: float) -> np.ndarray:
    log_p_s = _log_softmax(_logits(student_logits), temperature)
    log_p_t = _log_softmax(_logits(teacher_logits), temperature)
    p_t = np.exp(log_p_t)
    # 0 * log 0 := 0 for classes the teacher gives no mass.
    safe = np.where(p_t > 0, log_p_t - log_p_s, 0.0)
    return (p_t * safe).sum(axis=-1)


def mean_kl(student_logits: Any, teacher_logits: Any, temperature: float = 1.0) -> float:
    """Mean over items of KL(p_t || p_s) at ``temperature`` (no T^2 factor)."""
    kl = _kl_per_item(student_logits, teacher_logits, temperature)
    return float(kl.mean()) if kl.size else float("nan")


def max_sq_distance(student_logits: Any, teacher_logits: Any) -> float:
    """epsilon = max over items of ||softmax(teacher) - softmax(student)||_2^2.

    The smallest eps satisfying the fidelity constraint
    max_x ||M_t(x) - M_s(x)||^2 <= eps on these items.
    """
    diff = softmax(_logits(teacher_logits)) - softmax(_logits(student_logits))
    sq = (diff**2).sum(axis=-1)
    return float(sq.max()) if sq.size else float("nan")


def expected_calibration_error(logits: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks").

    Items are binned by confidence c = max softmax probability into ``n_bins``
    equal-width bins (lower < c <= upper);
    ECE = sum_b |B_b| / N * |accuracy(B_b) - mean_confidence(B_b)|.
    """
    probs = softmax(_logits(logits))
    labels = _np(labels).reshape(-1)
    n = labels.size
    if n == 0:
        return float("nan")
    conf = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" finds the first edge >= c, so c lands in (edges[i-1], edges[i]].
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    # |sum acc - sum conf| / N equals (count / N) * |mean acc - mean conf| per bin.
    return float(np.abs(acc_sum - conf_sum).sum() / n)


def soft_label_stats(
    teacher_logits: Any, temperature: float = 1.0, labels: Any | None = None
) -> dict[str, float]:
    """How informative the teacher's soft labels are at ``temperature``.

    Returns ``mean_top_prob``, ``mean_entropy`` (nats), ``normalized_entropy``
    (mean entropy / log C, 0 = one-hot, 1 = uniform), ``num_classes`` and, when
    ``labels`` are given, ``teacher_error_rate`` over items whose label is not -100.
    """
    logits = _logits(teacher_logits)
    log_p = _log_softmax(logits, temperature)
    p = np.exp(log_p)
    entropy = -(p * np.where(p > 0, log_p, 0.0)).sum(axis=-1)
    mean_entropy = float(entropy.mean())
    num_classes = logits.shape[-1]
    stats = {
        "mean_top_prob": float(p.max(axis=-1).mean()),
        "mean_entropy": mean_entropy,
        # A single class has no uncertainty to normalise; call it 0.
        "normalized_entropy": float(mean_entropy / np.log(num_classes)) if num_classes > 1 else 0.0,
        "num_classes": int(num_classes),
    }
    if labels is not None:
        labels = _np(labels).reshape(-1)
        keep = labels != IGNORE_INDEX
        stats["teacher_error_rate"] = 1.0 - accuracy(logits[keep], labels[keep])
    return stats


# Soft labels whose top class holds this much mass on average are "nearly one-hot": the wrong classes share under 5%
# between them, so the labels tell a student little beyond the gold label.
ONE_HOT_TOP_PROB = 0.95


# Soft labels whose mean top probability lies within this share of the way from a uniform guess (1/C) to certainty are
# "nearly uniform": they say little about which class is right (an underconfident teacher, or too high a temperature).
UNIFORM_SHARE = 0.3


def uniform_limit(num_classes: int) -> float:
    """The mean top probability under which soft labels over `num_classes` classes count as nearly uniform."""
    return 1 / num_classes + UNIFORM_SHARE * (1 - 1 / num_classes)


def uniform_warning(stats: dict[str, float], temperature: float, split: str = "train") -> str | None:
    """A warning when `soft_label_stats` at `temperature` say the soft labels are nearly uniform, else None."""
    classes = stats.get("num_classes")
    if not classes or classes < 2 or stats["mean_top_prob"] >= uniform_limit(classes):
        return None
    return (f"the teacher's soft labels on {split} at T={temperature:g} are nearly uniform (mean top probability "
            f"{stats['mean_top_prob']:.3f}, against {1 / classes:.3f} for a uniform guess over {classes} classes): "
            "they say little about which class is right, and a student that learns them inherits an underconfident "
            "teacher. Remedies: a lower temperature, a teacher trained longer, and a look at the teacher's "
            "calibration (ECE, in eval.json)")


def one_hot_warning(stats: dict[str, float], temperature: float, split: str = "train") -> str | None:
    """A warning when `soft_label_stats` at `temperature` say the soft labels are nearly one-hot, else None."""
    if stats["mean_top_prob"] < ONE_HOT_TOP_PROB:
        return None
    return (f"the teacher's soft labels on {split} at T={temperature:g} are nearly one-hot (mean top probability "
            f"{stats['mean_top_prob']:.3f} >= {ONE_HOT_TOP_PROB}): they add little to the gold labels. Remedies: a "
            "transfer_file of data the teacher did not train on (kdistill augment makes one), a higher temperature, "
            "or soft labels from teachers that did not see these rows")


def classification_metrics(
    student_logits: Any,
    labels: Any,
    teacher_logits: Any | None = None,
    num_labels: int | None = None,
    mask: Any | None = None,
) -> dict[str, float]:
    """Student metrics, plus teacher fidelity metrics when ``teacher_logits`` are given.

    Label-based metrics (accuracy, macro_f1, ece, teacher_accuracy) skip items
    labelled -100; fidelity metrics (agreement, kl_to_teacher at T=1, epsilon)
    use every item, since they need no labels. ``mask`` (the items' shape, boolean)
    drops items that are not items at all (padding) from both.
    """
    student = _logits(student_logits)
    labels = _np(labels).reshape(-1)
    items = np.ones(len(labels), dtype=bool) if mask is None else _np(mask).reshape(-1).astype(bool)
    if teacher_logits is not None:
        teacher_logits = _logits(teacher_logits)[items]
    student, labels = student[items], labels[items]
    keep = labels != IGNORE_INDEX
    out = {
        "accuracy": accuracy(student[keep], labels[keep]),
        "macro_f1": macro_f1(student[keep], labels[keep], num_labels=num_labels),
        "ece": expected_calibration_error(student[keep], labels[keep]),
    }
    if teacher_logits is not None:
        teacher = teacher_logits
        out["agreement"] = agreement(student, teacher)
        out["kl_to_teacher"] = mean_kl(student, teacher)
        out["epsilon"] = max_sq_distance(student, teacher)
        out["teacher_accuracy"] = accuracy(teacher[keep], labels[keep])
    return out


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature), over labelled items."""
    z, y = _logits(logits), _np(labels).reshape(-1)
    keep = y != IGNORE_INDEX
    log_p = _log_softmax(z[keep], temperature)
    return float(-log_p[np.arange(int(keep.sum())), y[keep]].mean())


def fit_temperature(logits: Any, labels: Any, low: float = 1e-3, high: float = 100.0, steps: int = 80) -> float:
    """Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", section 4.2): the one T > 0
    that minimises the NLL of held-out labels under softmax(logits / T). The NLL is convex in 1/T, so a golden-section
    search over log T in [low, high] finds it; `steps` iterations narrow the interval by 0.618**steps."""
    z, y = _logits(logits), _np(labels).reshape(-1)
    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(z, y, float(np.exp(c))), nll(z, y, float(np.exp(d)))
    for _ in range(steps):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(z, y, float(np.exp(c)))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(z, y, float(np.exp(d)))
    return float(np.exp((a + b) / 2))


def _seen(rows: list) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row: a model's word logits as float64 [words seen, C] and which of them hold a vector (a word its
    tokenizer gave no sub-token is a zero vector)."""
    logits = [_np(r).astype(np.float64).reshape(-1, _np(r).shape[-1]) for r in rows]
    return logits, [np.abs(z).sum(axis=-1) > 0 for z in logits]


def token_classification_metrics(
    student_logits: list,
    labels: list,
    teacher_logits: list | None = None,
    label_names: list[str] | None = None,
) -> dict[str, Any]:
    """Entity and word metrics of a tagger, plus fidelity to its teacher at word level.

    Each argument holds one entry per sentence: the model's logits per word ``[words seen, C]`` (a sentence cut at
    max_length has fewer words than its labels; a word without a sub-token is a zero vector) and the gold tag id of
    every word (-100: unlabelled). A word the model did not see is predicted ``O``, so truncation costs what it
    would cost in use. Returns entity-level micro precision, recall and F1 (seqeval, strict IOB2: an entity counts
    only with its exact span and type), per-type precision/recall/F1/support, word accuracy, ECE over the words
    seen, the number of words not seen, and with ``teacher_logits``: agreement, mean KL (T=1) and epsilon over the
    words both saw.
    """
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    student, seen = _seen(student_logits)
    names = label_names or [str(i) for i in range(student[0].shape[-1] if student else 0)]
    outside = names.index("O") if "O" in names else 0
    gold_tags, pred_tags, correct, words, unseen = [], [], 0, 0, 0
    ece_logits, ece_labels = [], []
    for z, ok, y in zip(student, seen, labels):
        y = _np(y).reshape(-1)
        keep = y != IGNORE_INDEX
        pred = np.full(len(y), outside)
        n = min(len(z), len(y))
        hit = np.zeros(len(y), dtype=bool)
        hit[:n] = ok[:n]
        pred[hit] = z[:n].argmax(axis=-1)[ok[:n]]
        unseen += int((~hit & keep).sum())
        correct += int((pred[keep] == y[keep]).sum())
        words += int(keep.sum())
        ece_logits.append(z[:n][hit[:n] & keep[:n]])
        ece_labels.append(y[:n][hit[:n] & keep[:n]])
        if keep.all():  # seqeval reads whole sentences: an unlabelled one (a transfer row) is not scored
            gold_tags.append([names[i] for i in y])
            pred_tags.append([names[i] for i in pred])
    strict = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    report = classification_report(gold_tags, pred_tags, output_dict=True, **strict)
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                    "support": int(v["support"])} for k, v in report.items() if not k.endswith(" avg")}
    out: dict[str, Any] = {
        "f1": float(f1_score(gold_tags, pred_tags, **strict)),
        "precision": float(precision_score(gold_tags, pred_tags, **strict)),
        "recall": float(recall_score(gold_tags, pred_tags, **strict)),
        "per_type": per_type,
        "accuracy": correct / words if words else float("nan"),
        "ece": expected_calibration_error(np.concatenate(ece_logits), np.concatenate(ece_labels))
        if ece_logits and sum(len(e) for e in ece_labels) else float("nan"),
        "words": words,
        "words_unseen": unseen,
    }
    if teacher_logits is not None:
        teacher, t_seen = _seen(teacher_logits)
        s_items, t_items = [], []
        for z_s, ok_s, z_t, ok_t in zip(student, seen, teacher, t_seen):
            n = min(len(z_s), len(z_t))
            both = ok_s[:n] & ok_t[:n]
            s_items.append(z_s[:n][both])
            t_items.append(z_t[:n][both])
        s_all, t_all = np.concatenate(s_items), np.concatenate(t_items)
        out["agreement"] = agreement(s_all, t_all)
        out["kl_to_teacher"] = mean_kl(s_all, t_all)
        out["epsilon"] = max_sq_distance(s_all, t_all)
    return out


class TopKMixture(tuple):
    """Several teachers' top-k cache rows at the same positions, with their weights: ``TopKMixture(parts,
    weights)``, parts a list of (values [L, k], indices [L, k], tail [L]). What `kdistill eval` scores an ensemble
    of top-k teachers as (`causal_lm_metrics`); `mixture_topk` reads it."""

    def __new__(cls, parts: Sequence[tuple], weights: Sequence[float]):
        out = super().__new__(cls, parts)
        total = float(sum(weights))
        out.weights = [float(w) / total for w in weights]
        return out


def mixture_topk(mix: TopKMixture) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teachers' probability mixture at T = 1 over the union of their top-k classes, position by position:
    (classes [L, n * k], their mixture probabilities [L, n * k], largest first, with a class several teachers hold
    counted once and its other slots 0; the mixture's tail mass [L], ``sum_i w_i * tail_i``).

    A class of the union that a teacher did not keep has some of that teacher's tail mass, which stays in the tail
    (the cache does not say how much): the union's probabilities are a lower bound of the mixture's, by at most the
    teachers' weighted tail mass.
    """
    from .losses.lm import teacher_buckets

    classes = torch.cat([i.long() for _, i, _ in mix], dim=-1)
    probs = torch.cat([w * teacher_buckets(v.float(), t.float())[..., :-1].exp() for w, (v, _, t) in
                       zip(mix.weights, mix)], dim=-1)
    tail = sum(w * t.float().exp() for w, (_, _, t) in zip(mix.weights, mix))
    order = classes.argsort(dim=-1, stable=True)
    classes, probs = classes.gather(-1, order), probs.gather(-1, order)
    first = torch.ones_like(classes, dtype=torch.bool)
    first[..., 1:] = classes[..., 1:] != classes[..., :-1]
    group = first.long().cumsum(dim=-1) - 1  # each slot's class's first slot, by rank
    summed = torch.zeros_like(probs).scatter_add_(-1, group, probs)  # at rank r: the r-th distinct class's total
    merged = torch.zeros_like(probs)
    merged[first] = summed.gather(-1, group)[first]
    rank = merged.argsort(dim=-1, descending=True, stable=True)
    return classes.gather(-1, rank), merged.gather(-1, rank), tail


def mixture_kl(logits: torch.Tensor, classes: torch.Tensor, probs: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """Per position, KL(mixture || model) at T = 1 over the union's classes and one bucket for every other class
    (`mixture_topk`'s output; slots of mass 0 add nothing, repeated classes are read once)."""
    log_q = torch.log_softmax(logits.float(), dim=-1)
    outside = torch.logsumexp(log_q.scatter(-1, classes, float("-inf")), dim=-1)
    keep = probs > 0
    head = torch.where(keep, probs * (probs.clamp(min=1e-45).log() - log_q.gather(-1, classes)),
                       torch.zeros_like(probs)).sum(dim=-1)
    rest = torch.where(tail > 0, tail * (tail.clamp(min=1e-45).log() - outside), torch.zeros_like(tail))
    return head + rest


def causal_lm_metrics(model_rows: Sequence[Any], labels: Sequence[Any], teacher_rows: Sequence[Any] | None = None,
                      characters: int | None = None) -> dict[str, float]:
    """Next-token quality of a language model on held-out blocks, and its fidelity to the teacher.

    Over the predicted positions (label != -100): `loss`, the mean token NLL in nats, `perplexity` = exp(loss),
    `accuracy` (top-1 next token) and, given the characters the predicted tokens spell, `loss_per_character`
    (`lm_data.loss_per_character`, comparable across tokenizers). With the teacher's rows: `agreement` (the model's
    top-1 token is the teacher's) and `mean_kl`, KL(teacher || model) at T = 1 per token, over the teacher's top-k
    buckets when its rows are a top-k cache's (losses.lm; exact with every logit).

    A row is a [block, V] tensor of logits, or a top-k cache's (values, indices, tail): such a model (the teacher
    scored from its cache) gets `accuracy` and `top_k_coverage` (the share of next tokens among its top k) only,
    its full distribution being gone. Several top-k teachers come as a `TopKMixture` row: scored as their mixture
    (`mixture_topk`: its top-1, its union's coverage, KL from it by `mixture_kl`).
    """
    from .lm_data import loss_per_character
    from .losses.lm import topk_divergence
    from .losses.logits import soft_kl

    counts = {"tokens": 0, "nll": 0.0, "correct": 0, "agree": 0, "kl": 0.0, "covered": 0}
    topk_model = bool(len(model_rows)) and isinstance(model_rows[0], tuple)
    for r, (row, y) in enumerate(zip(model_rows, labels)):
        y = torch.as_tensor(y)
        keep = y.ne(-100)
        n = int(keep.sum())
        counts["tokens"] += n
        if topk_model:
            indices = (mixture_topk(row)[0] if isinstance(row, TopKMixture) else row[1])[keep]
            counts["correct"] += int((indices[:, 0] == y[keep]).sum())
            counts["covered"] += int((indices == y[keep].unsqueeze(-1)).any(dim=-1).sum())
            continue
        logits = torch.as_tensor(row).float()[keep]
        counts["nll"] += float(torch.nn.functional.cross_entropy(logits, y[keep], reduction="sum"))
        top1 = logits.argmax(dim=-1)
        counts["correct"] += int((top1 == y[keep]).sum())
        if teacher_rows is not None:
            teacher = teacher_rows[r]
            if isinstance(teacher, TopKMixture):
                classes, probs, tail = (x[keep] for x in mixture_topk(teacher))
                counts["agree"] += int((top1 == classes[:, 0]).sum())
                counts["kl"] += float(mixture_kl(logits, classes, probs, tail).sum())
            elif isinstance(teacher, tuple):
                v, i, t = (x[keep] for x in teacher)
                counts["agree"] += int((top1 == i[:, 0]).sum())
                counts["kl"] += float(topk_divergence(logits, v, i, t, "forward_kl", 1.0, num_items=1))
            else:
                tl = torch.as_tensor(teacher).float()[keep]
                counts["agree"] += int((top1 == tl.argmax(dim=-1)).sum())
                counts["kl"] += float(soft_kl(logits, tl, 1.0, num_items=1))
    tokens = max(counts["tokens"], 1)
    out = {"tokens": counts["tokens"], "accuracy": counts["correct"] / tokens}
    if topk_model:
        out["top_k_coverage"] = counts["covered"] / tokens
        return out
    loss = counts["nll"] / tokens
    out.update(loss=loss, perplexity=float(np.exp(loss)))
    if characters:
        out["loss_per_character"] = loss_per_character(loss, counts["tokens"], characters)
    if teacher_rows is not None:
        out.update(agreement=counts["agree"] / tokens, mean_kl=counts["kl"] / tokens)
    return out


def rouge_l(candidate: Sequence[Any], reference: Sequence[Any], beta: float = 1.0) -> float:
    """ROUGE-L of one candidate against one reference (Lin 2004, "ROUGE: A Package for Automatic Evaluation of
    Summaries", section 3.1): with LCS the length of their longest common subsequence, m = len(reference) and
    n = len(candidate), R = LCS / m, P = LCS / n and F = (1 + beta^2) R P / (R + beta^2 P); 0 when either is
    empty or they share nothing. Sequences of tokens (e.g. `text.split()`), compared with ==.
    """
    m, n = len(reference), len(candidate)
    if not m or not n:
        return 0.0
    previous = [0] * (n + 1)  # LCS lengths of reference[:i] against each prefix of candidate, one row at a time
    for token in reference:
        row = [0] * (n + 1)
        for j, other in enumerate(candidate, 1):
            row[j] = previous[j - 1] + 1 if token == other else max(previous[j], row[j - 1])
        previous = row
    lcs = previous[n]
    if not lcs:
        return 0.0
    recall, precision = lcs / m, lcs / n
    return (1 + beta**2) * recall * precision / (recall + beta**2 * precision)


def mean_rouge_l(candidates: Sequence[str], references: Sequence[str]) -> float:
    """The mean of `rouge_l` over pairs of texts, split on whitespace (case and punctuation kept)."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    if not references:
        raise ValueError("mean_rouge_l needs at least one pair")
    return sum(rouge_l(c.split(), r.split()) for c, r in zip(candidates, references)) / len(references)
