"""The report of a `kdistill compare` sweep: aggregates, paired differences, a verdict, plots, Markdown and HTML.

Everything here is a function of the results dict (see `compare.run_sweep`): per-run records under "runs", plus the
teacher's metrics, soft-label diagnostics and speed. Aggregates and the verdict are recomputed from the runs each
time, so `kdistill report DIR` rebuilds the same report from `results.json` alone.

Statistics: a cell's interval is a Student-t interval over its seeds (a percentile-bootstrap one for the bounded
agreement, KL, epsilon and ECE); a setting is compared with hard labels by the
paired differences over the seeds both ran (paired t), since a seed fixes initialisation and data order for both.
"""

from __future__ import annotations

import json
import os

from ..errors import UserError
from ..files import write_text
from ..metrics import ONE_HOT_TOP_PROB, uniform_limit
from ..schedules import parse as parse_schedule
from ..stats import CONFIDENCE, bootstrap_interval, paired_difference, t_interval
from .common import pyplot, save_figure, teachers_text, to_html, to_markdown

METRICS = ("accuracy", "macro_f1", "f1", "agreement", "kl_to_teacher", "epsilon", "ece", "validation_accuracy",
           "validation_f1")
# The headline metric a sweep is judged on is the task's (`Task.headline_metric`, results["metric"]): accuracy for
# classification, entity-level micro F1 for token classification. Its name in tables, plots and verdicts:
TITLES = {"accuracy": "accuracy", "f1": "entity F1"}
# Metrics whose values sit near a bound (0 for calibration error, KL and epsilon, 1 for agreement), where a t-interval
# over a few seeds crosses it: their intervals are percentile-bootstrap ones, which stay inside the seeds' range.
BOUNDED = ("agreement", "kl_to_teacher", "epsilon", "ece")
def plot_files(metric: str = "accuracy") -> dict[str, str]:
    """The sweep report's plot files, named after the metric the sweep compares on (`accuracy_by_strategy.png` for
    a classifier, `f1_by_strategy.png` for a tagger)."""
    return {"by_strategy": f"{metric}_by_strategy.png", "vs_temperature": f"{metric}_vs_temperature.png",
            "vs_latency": f"{metric}_vs_latency.png", "fidelity": "fidelity_by_strategy.png"}


PLOTS = tuple(plot_files().values())  # a classifier's
METHOD = ("95% intervals are Student-t intervals over seeds, percentile-bootstrap ones for agreement, KL, epsilon and "
          "ECE (which must stay inside their range); differences from hard labels are paired by seed (each "
          "seed starts both runs from the same initialisation and data order) with a paired t-interval.")


# ------------------------------------------------------------------------------------------------ numbers


def aggregate(runs: list[dict], confidence: float = CONFIDENCE) -> list[dict]:
    """One entry per (student, setting), in order of first appearance: every metric's mean, std and interval."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["student"], run["setting"]), []).append(run)
    out = []
    for (student, setting), group in groups.items():
        first = group[0]
        entry = {"student": student, "setting": setting, "strategy": first["strategy"],
                 "temperature": first.get("temperature"), "alpha": first.get("alpha"),
                 "seeds": [r["seed"] for r in group], "n": len(group)}
        # A scheduled temperature or alpha is None above, its spec here (the setting's label holds its name).
        entry.update({k: first[k] for k in ("temperature_schedule", "alpha_schedule") if first.get(k) is not None})
        for metric in METRICS:
            values = [r["metrics"][metric] for r in group if r["metrics"].get(metric) is not None]
            if values:
                entry[metric] = (bootstrap_interval if metric in BOUNDED else t_interval)(values, confidence)
        out.append(entry)
    return out


def compare_to_hard(runs: list[dict], metric: str = "accuracy", confidence: float = CONFIDENCE) -> list[dict]:
    """For every setting other than hard: its paired difference from hard labels on `metric`, per student."""
    by_seed: dict[tuple[str, str], dict] = {}
    for run in runs:
        value = run["metrics"].get(metric)
        if value is not None:
            by_seed.setdefault((run["student"], run["setting"]), {})[run["seed"]] = value
    out = []
    for (student, setting), values in by_seed.items():
        hard = by_seed.get((student, "hard"))
        if setting == "hard" or hard is None:
            continue
        diff = paired_difference(values, hard, confidence)
        if diff is not None:
            out.append({"student": student, "setting": setting, "versus": "hard", "metric": metric, **diff})
    return out


def headline(results: dict) -> str:
    """The metric the sweep is judged on (results written before it was recorded: accuracy)."""
    return results.get("metric") or "accuracy"


def _title(metric: str, capital: bool = False) -> str:
    title = TITLES.get(metric, metric)
    return title[:1].upper() + title[1:] if capital else title


def _selection_metric(cells: list[dict], metric: str = "accuracy") -> str:
    validation = f"validation_{metric}"
    return validation if cells and all(validation in c for c in cells) else metric


def best_cell(cells: list[dict], strategies: tuple[str, ...], metric: str = "accuracy") -> dict | None:
    """The setting of `strategies` with the best mean selection metric (validation when every cell has it)."""
    candidates = [c for c in cells if c["strategy"] in strategies]
    if not candidates:
        return None
    chosen_by = _selection_metric(candidates, metric)
    return max(candidates, key=lambda c: c[chosen_by]["mean"])  # max keeps the first of ties: the simpler setting


def best_replicated(cells: list[dict], strategies: tuple[str, ...], metric: str = "accuracy") -> dict | None:
    """best_cell among the settings run with the most seeds, so that a verdict rests on an interval.

    In a sweep where every setting has the same seeds this is best_cell. In a two-stage design (every setting with
    one seed, then the chosen ones again with more) it picks among the settings that were rerun; a one-seed
    setting that edges ahead on validation has no interval to judge it by.
    """
    candidates = [c for c in cells if c["strategy"] in strategies]
    if not candidates:
        return None
    most = max(c["n"] for c in candidates)
    return best_cell([c for c in candidates if c["n"] == most], strategies, metric)


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _diff_text(diff: dict) -> str:
    if diff.get("low") is None:
        return f"{_points(diff['mean'])} points (one seed, no interval)"
    return f"{_points(diff['mean'])} points (95% CI {100 * diff['low']:.1f} to {100 * diff['high']:.1f}, {diff['n']} seeds)"


def _differs(diff: dict) -> int:
    """+1 / -1 when the interval excludes zero, 0 when it does not (or there is none)."""
    if diff.get("low") is None:
        return 0
    return 1 if diff["low"] > 0 else -1 if diff["high"] < 0 else 0


def _one_hot_sentence(diagnostics: dict, temperature: float | None) -> str | None:
    """Says so when the teacher's training-data soft labels are too close to one-hot to teach much."""
    train = diagnostics.get("train")
    if not train or "1" not in train:
        return None
    at1 = train["1"]
    if at1["mean_top_prob"] < ONE_HOT_TOP_PROB:
        return None
    text = (f"The teacher's soft labels on its own training data are nearly one-hot (mean top probability "
            f"{at1['mean_top_prob']:.3f} at T=1")
    key = f"{temperature:g}" if temperature is not None else None
    if key and key in train and key != "1":
        text += f", {train[key]['mean_top_prob']:.3f} at T={key}"
    if "teacher_error_rate" in at1:
        text += f"; it gets {at1['teacher_error_rate']:.1%} of them wrong"
    text += ")"
    test = diagnostics.get("test", {}).get("1")
    if test:
        text += f", against {test['mean_top_prob']:.3f} on the held-out test split"
    return (text + ": they carry little beyond the gold labels, which is the usual reason soft labels do not win. "
            "Remedies: data the teacher did not train on (`transfer_file`), out-of-fold soft labels, a higher "
            "temperature.")


def _not_one_hot_sentence(diagnostics: dict, temperature: float | None = None) -> str | None:
    train = diagnostics.get("train", {}).get("1")
    if not train or train["mean_top_prob"] >= ONE_HOT_TOP_PROB:
        return None
    text = (f"The teacher's soft labels on its training data are not nearly one-hot (mean top probability "
            f"{train['mean_top_prob']:.3f} at T=1), so that is not the reason here.")
    key = f"{temperature:g}" if temperature is not None else "1"
    at = diagnostics.get("train", {}).get(key) or train
    classes = at.get("num_classes")
    if classes and at["mean_top_prob"] < uniform_limit(classes):
        text += (f" They are nearly uniform instead (mean top probability {at['mean_top_prob']:.3f} at T={key}, "
                 f"against {1 / classes:.3f} for a uniform guess over {classes} classes): they say little about "
                 "which class is right, and the student inherits an underconfident teacher. Remedies: a lower "
                 "temperature, a teacher trained longer; the teacher's ECE above says how underconfident it is.")
    return text


def verdicts(cells: list[dict], diffs: list[dict], diagnostics: dict, validation_is_test: bool = False,
             metric: str = "accuracy") -> list[str]:
    """One plain paragraph per student: does the best soft-label setting beat hard labels, and why (not).

    Args:
        validation_is_test: the sweep's validation file is its test file, so a choice "on validation" is a choice
            on the test set.
        metric: the headline metric (the `diffs` are on it); a verdict on another than accuracy names it.
    """
    out = []
    for student in dict.fromkeys(c["student"] for c in cells):
        mine = [c for c in cells if c["student"] == student]
        diff_of = {d["setting"]: d for d in diffs if d["student"] == student}
        hard = next((c for c in mine if c["setting"] == "hard"), None)
        best = best_replicated(mine, ("soft", "mixed"), metric)
        name = f"the {student} student" if student != "student" else "the student"
        if hard is None or best is None:
            out.append(f"For {name}, the grid has no {'hard-label' if hard is None else 'soft-label'} runs to compare.")
            continue
        soft_cells = [c for c in mine if c["strategy"] in ("soft", "mixed")]
        chosen = "validation" if _selection_metric(soft_cells, metric).startswith("validation_") \
            else "test (no validation split: the difference is optimistic)"
        if validation_is_test and chosen == "validation":
            chosen = "the test set (the validation file is the test file: the difference is optimistic)"
        if any(c["n"] != best["n"] for c in soft_cells):
            chosen += f", among the settings run with {best['n']} seeds"
        diff = diff_of.get(best["setting"])
        if diff is None:
            out.append(f"For {name}, hard and {best['setting']} share no seed, so they cannot be paired.")
            continue
        sign = _differs(diff)
        family = "soft labels" if best["strategy"] == "soft" else f"mixed labels (alpha={best['alpha']:g})"
        where = f"at T={best['temperature']:g}" if best.get("temperature") is not None else ""
        if sign > 0:
            text = f"On this data, {family} {where} beat hard labels by {_diff_text(diff)} for {name}"
        elif sign < 0:
            text = (f"On this data, hard labels beat the best soft-label setting ({best['setting']}) by "
                    f"{_diff_text({**diff, 'mean': -diff['mean'], 'low': -diff['high'], 'high': -diff['low']})} "
                    f"for {name}")
        elif diff.get("low") is None:
            text = (f"With one seed there is no verdict for {name}: the best soft-label setting, {best['setting']}, "
                    f"differs from hard by {_diff_text(diff)}; run more seeds for an interval")
        else:
            text = (f"On this data, soft labels do not measurably beat hard labels for {name}: the best setting, "
                    f"{best['setting']}, differs from hard by {_diff_text(diff)}, an interval that includes 0")
        judged = "" if metric == "accuracy" else f"test {_title(metric)}; "
        text += f" ({judged}settings chosen on {chosen})."
        other = best_replicated(mine, ("mixed",) if best["strategy"] == "soft" else ("soft",), metric)
        if other is not None:
            rel = paired_difference(dict(zip(other["seeds"], other[metric]["values"])),
                                    dict(zip(best["seeds"], best[metric]["values"])))
            if rel is not None:
                word = {0: "is not distinguishable from", 1: "beats", -1: "is worse than"}[_differs(rel)]
                text += f" The best {other['strategy']} setting, {other['setting']}, {word} {best['setting']}: {_diff_text(rel)}."
        scratch = diff_of.get("scratch")
        if scratch is not None:
            text += (f" A student of the same shape trained from random initialisation on hard labels ('scratch') "
                     f"differs from hard by {_diff_text(scratch)}: that is what starting from the teacher's weights is worth.")
        if sign <= 0:
            reason = _one_hot_sentence(diagnostics, best.get("temperature")) or \
                _not_one_hot_sentence(diagnostics, best.get("temperature"))
            if reason:
                text += " " + reason
        if sign == 0 and diff.get("low") is not None:
            text += (f" With {diff['n']} seeds the interval spans {100 * (diff['high'] - diff['low']):.1f} points; more "
                     "seeds narrow it (about as one over the square root of their number).")
        out.append(text)
    return out


# ------------------------------------------------------------------------------------------------ plots


def _pct(ci: dict) -> tuple[float, list[float]]:
    mean = 100 * ci["mean"]
    if ci.get("low") is None:
        return mean, [0.0, 0.0]
    return mean, [mean - 100 * ci["low"], 100 * ci["high"] - mean]


def _students(cells: list[dict]) -> list[str]:
    return list(dict.fromkeys(c["student"] for c in cells))


COLORS = {"hard": "black", "scratch": "gray", "soft": "tab:blue", "mixed": "tab:orange"}


def plot_accuracy_by_strategy(results: dict, path: str) -> None:
    """The headline metric (accuracy, or the task's: see `headline`) by setting; the file keeps its name."""
    plt = pyplot()
    cells, students, metric = results["cells"], _students(results["cells"]), headline(results)
    title = _title(metric)
    teacher = results.get("teacher", {}).get(metric)
    n = max(sum(c["student"] == s for c in cells) for s in students)
    fig, axes = plt.subplots(len(students), 1, figsize=(7, (0.35 * n + 1.3) * len(students)), squeeze=False,
                             layout="constrained")
    for ax, student in zip(axes[:, 0], students):
        mine = [c for c in cells if c["student"] == student]
        for i, c in enumerate(mine):
            mean, err = _pct(c[metric])
            ax.errorbar([mean], [i], xerr=[[err[0]], [err[1]]], fmt="o", capsize=3, color=COLORS[c["strategy"]])
        hard = next((c for c in mine if c["setting"] == "hard"), None)
        if hard and hard[metric].get("low") is not None:
            ax.axvspan(100 * hard[metric]["low"], 100 * hard[metric]["high"], color="gray", alpha=0.15,
                       label="hard labels, 95% CI")
        if teacher is not None:
            ax.axvline(100 * teacher, color="green", ls="--", label="teacher")
        ax.set_yticks(range(len(mine)), [c["setting"] for c in mine])
        ax.invert_yaxis()
        ax.set_title(f"{student}: test {title}, mean and 95% t-interval over seeds", fontsize=10)
        ax.set_xlabel(f"{title} (%)")
        ax.legend(fontsize=8, loc="best")
    save_figure(fig, path)


def plot_accuracy_vs_temperature(results: dict, path: str) -> bool:
    cells, students = results["cells"], _students(results["cells"])
    if not any(c.get("temperature") is not None for c in cells):
        return False
    plt = pyplot()
    metric = headline(results)
    teacher = results.get("teacher", {}).get(metric)
    fig, axes = plt.subplots(1, len(students), figsize=(5.5 * len(students), 4), squeeze=False, layout="constrained")
    for ax, student in zip(axes[0], students):
        mine = [c for c in cells if c["student"] == student]
        lines: dict[str, list[dict]] = {}
        for c in mine:
            if c.get("temperature") is not None:
                label = c["strategy"] if c.get("alpha") is None else f"mixed a={c['alpha']:g}"
                lines.setdefault(label, []).append(c)
        for label, group in lines.items():
            group.sort(key=lambda c: c["temperature"])
            means, errs = zip(*[_pct(c[metric]) for c in group])
            ax.errorbar([c["temperature"] for c in group], means, yerr=list(zip(*errs)), marker="o", capsize=3,
                        label=label, ls="-" if label == "soft" else "--")
        hard = next((c for c in mine if c["setting"] == "hard"), None)
        if hard:
            ax.axhline(100 * hard[metric]["mean"], color="black", label="hard (band: 95% CI)")
            if hard[metric].get("low") is not None:
                ax.axhspan(100 * hard[metric]["low"], 100 * hard[metric]["high"], color="gray", alpha=0.15)
        if teacher is not None:
            ax.axhline(100 * teacher, color="green", ls=":", label="teacher")
        temps = sorted({c["temperature"] for c in mine if c.get("temperature") is not None})
        ax.set_xscale("log", base=2)
        ax.set_xticks(temps, [f"{t:g}" for t in temps])
        ax.minorticks_off()
        ax.set_xlabel("temperature T")
        ax.set_ylabel(f"test {_title(metric)} (%)")
        ax.set_title(student)
        ax.legend(fontsize=8)
    fig.suptitle(f"{_title(metric, True)} against temperature, mean and 95% t-interval over seeds")
    save_figure(fig, path)
    return True


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and accuracy (higher)."""
    front = []
    for i, (lat, acc) in enumerate(points):
        if not any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points) if j != i):
            front.append(i)
    return front


def plot_accuracy_vs_latency(results: dict, path: str) -> bool:
    speed, cells = results.get("speed") or {}, results["cells"]
    names = [s for s in _students(cells) if s in speed]
    if not names:
        return False
    plt = pyplot()
    metric = headline(results)
    points, labels = [], []
    teacher_latency = [speed[s]["teacher"]["latency_ms_b1"] for s in names]
    if results.get("teacher", {}).get(metric) is not None:
        points.append((sum(teacher_latency) / len(teacher_latency), 100 * results["teacher"][metric]))
        labels.append("teacher")
    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    for s in names:
        latency = speed[s]["student"]["latency_ms_b1"]
        mine = [c for c in cells if c["student"] == s]
        ax.scatter([latency] * len(mine), [100 * c[metric]["mean"] for c in mine], s=12, color="lightgray")
        top = max(mine, key=lambda c: c[metric]["mean"])
        points.append((latency, 100 * top[metric]["mean"]))
        labels.append(f"{s} ({top['setting']})")
    front = set(pareto_front(points))
    for i, ((lat, acc), label) in enumerate(zip(points, labels)):
        ax.scatter([lat], [acc], s=70, marker="*" if i in front else "o",
                   color="tab:red" if i in front else "tab:blue", zorder=3)
        ax.annotate(label, (lat, acc), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ordered = sorted(points[i] for i in front)
    ax.plot([p[0] for p in ordered], [p[1] for p in ordered], color="tab:red", lw=1, ls="--",
            label="Pareto front (stars)")
    ax.set_xlabel("CPU latency at batch 1 (ms, median)")
    ax.set_ylabel(f"test {_title(metric)} (%)")
    ax.set_title("Compression trade-off: best setting per model (gray: other settings)")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def plot_fidelity(results: dict, path: str) -> None:
    plt = pyplot()
    cells = results["cells"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.3 * len(cells) + 1.8), layout="constrained")
    names = [f"{c['student']}: {c['setting']}" for c in cells]
    for ax, metric, title in ((axes[0], "agreement", "agreement with the teacher (%)"),
                              (axes[1], "ece", "expected calibration error (15 bins, %)")):
        for i, c in enumerate(cells):
            if metric in c:
                mean, err = _pct(c[metric])
                ax.errorbar([mean], [i], xerr=[[err[0]], [err[1]]], fmt="o", capsize=3, color=COLORS[c["strategy"]])
        ax.set_yticks(range(len(cells)), names if ax is axes[0] else [""] * len(cells))
        ax.invert_yaxis()
        ax.set_xlabel(title)
    fig.suptitle("Fidelity and calibration by setting, mean and 95% bootstrap interval over seeds")
    save_figure(fig, path)


# ------------------------------------------------------------------------------------------------ documents


def _ci_text(ci: dict | None, scale: float = 100, digits: int = 1) -> str:
    if not ci:
        return "-"
    if ci.get("low") is None:
        return f"{scale * ci['mean']:.{digits}f}"
    return f"{scale * ci['mean']:.{digits}f} [{scale * ci['low']:.{digits}f}, {scale * ci['high']:.{digits}f}]"


def _grid_text(values: list | None) -> str:
    """A grid's temperatures or alphas: '[2.0, 4.0]' as always, or with schedules '[2, cosine 8→1]' (by name)."""
    if not values or not any(isinstance(v, dict) for v in values):
        return str(values)
    return "[" + ", ".join(parse_schedule(v).name if isinstance(v, dict) else f"{v:g}" for v in values) + "]"


def _blocks(results: dict) -> list[tuple]:
    """The report as a list of blocks, rendered to both Markdown and HTML."""
    cells, diffs, diagnostics = results["cells"], results["comparisons"], results.get("diagnostics", {})
    teacher, speed = results.get("teacher", {}), results.get("speed") or {}
    diff_of = {(d["student"], d["setting"]): d for d in diffs}
    metric = headline(results)
    title = _title(metric)
    # Beside the headline, a second quality column: macro-F1 for classification, accuracy (per item) otherwise.
    second, second_title = ("macro_f1", "macro-F1 %") if metric == "accuracy" else ("accuracy", "accuracy %")
    b: list[tuple] = [("h1", "Do soft labels pay off here? (kdistill compare)")]
    b += [("p", f"**Verdict.** {v}") for v in results["verdict"]]
    grid = results.get("grid", {})
    b.append(("p", f"{len(results['runs'])} runs in {results.get('output_dir', '.')}: strategies "
                   f"{', '.join(grid.get('strategies', []))}; temperatures {_grid_text(grid.get('temperatures'))}; "
                   f"alphas {_grid_text(grid.get('alphas'))}; seeds {grid.get('seeds')}"
                   + (f"; teacher sets {', '.join(grid['teacher_sets'])} (soft and mixed run once per set, named in "
                      "brackets)" if grid.get("teacher_sets") else "")
                   + f". {METHOD} Made {results.get('created', '?')} on "
                   f"{results.get('machine', {}).get('cpu', '?')} ({results.get('machine', {}).get('cores', '?')} cores)."))
    b.append(("h2", "Results by setting"))
    rows = []
    for c in cells:
        d = diff_of.get((c["student"], c["setting"]))
        rows.append([c["student"], c["setting"], str(c["n"]), _ci_text(c.get(metric)),
                     _diff_text(d) if d else "-", _ci_text(c.get(f"validation_{metric}")), _ci_text(c.get(second)),
                     _ci_text(c.get("agreement")), _ci_text(c.get("kl_to_teacher"), 1, 3), _ci_text(c.get("ece"))])
    validation_title = "validation acc. %" if metric == "accuracy" else f"validation {title} %"
    b.append(("table", ["student", "setting", "seeds", f"test {title} % [95% CI]", "minus hard (paired)",
                        validation_title, second_title, "agreement %", "KL to teacher", "ECE %"], rows))
    if teacher:
        shown = ", ".join(f"{name} {100 * teacher[key]:.2f}%" for key, name in
                          ((metric, title), (second, second_title[:-2]), ("ece", "ECE")) if teacher.get(key) is not None)
        b.append(("p", f"Teacher on the same test rows: {shown}."))
    for name, set_teacher in (results.get("teacher_sets") or {}).items():
        shown = ", ".join(f"{label} {100 * set_teacher[key]:.2f}%" for key, label in ((metric, title), ("ece", "ECE"))
                          if set_teacher.get(key) is not None)
        members = teachers_text(set_teacher, metric)
        b.append(("p", f"Teacher set **{name}** on the same test rows: {shown}" + (f"; {members}" if members else "")
                       + "."))
    files = plot_files(metric)
    b.append(("img", files["by_strategy"], f"Test {title} by setting with 95% intervals"))
    if files["vs_temperature"] in results.get("plots", []):
        b.append(("img", files["vs_temperature"], f"{_title(metric, True)} against temperature"))
    b.append(("img", files["fidelity"], "Agreement with the teacher and calibration by setting"))

    b.append(("h2", "The teacher's soft labels"))
    b.append(("p", "How much a soft label can teach beyond the gold label: mean probability of the top class (1 = "
                   "one-hot) and mean entropy over log(classes) (0 = one-hot, 1 = uniform), at each temperature; "
                   f"above {ONE_HOT_TOP_PROB} mean top probability they are nearly one-hot. 'wrong' is the share of "
                   "rows where the teacher's top class is not the gold label."))
    if diagnostics:
        temps = list(next(iter(diagnostics.values())))
        drows = []
        for split, by_t in diagnostics.items():
            wrong = by_t[temps[0]].get("teacher_error_rate")
            drows.append([split] + [f"{s['mean_top_prob']:.3f} / {s['normalized_entropy']:.2f}" for s in by_t.values()]
                         + [f"{wrong:.1%}" if wrong is not None else "-"])
        b.append(("table", ["split"] + [f"T={t}" for t in temps] + ["wrong"], drows))

    if speed:
        b.append(("h2", "Size and CPU speed"))
        srows = []
        for name, s in speed.items():
            srows.append([name, f"{s['student']['parameters']:,}", f"{s['student']['size_bytes'] / 1e6:.1f}",
                          f"{s['student']['latency_ms_b1']:.2f}", f"{s['student']['throughput_b64']:.0f}",
                          f"{s['teacher']['latency_ms_b1']:.2f}", f"{s['teacher']['throughput_b64']:.0f}",
                          f"{s['speedup_b1']:.2f}x / {s['speedup_b64']:.2f}x"])
        b.append(("table", ["student", "parameters", "MB", "latency b=1 ms", "rows/s b=64", "teacher latency ms",
                            "teacher rows/s", "speed-up b1 / b64"], srows))
        b.append(("p", "Student and teacher are timed one after the other in the same call on the same rows; compare "
                       "the ratios, not the absolute times (shared machines are noisy). One timing per student "
                       "shape: the setting does not change a model's speed."))
        if plot_files(metric)["vs_latency"] in results.get("plots", []):
            b.append(("img", plot_files(metric)["vs_latency"],
                      f"{_title(metric, True)} against CPU latency, Pareto front marked"))
    b.append(("h2", "Cost"))
    seconds = [r["train_seconds"] for r in results["runs"] if "train_seconds" in r]
    if seconds:
        b.append(("p", f"Training took {sum(seconds) / 60:.1f} minutes over {len(seconds)} runs (mean "
                       f"{sum(seconds) / len(seconds):.0f} s per run); a sweep's cost grows linearly with its number "
                       "of runs (students x settings x seeds), while the teacher and its soft labels are paid once. "
                       "TensorBoard logs of each run (loss and one curve per loss term: loss_hard_ce, loss_soft_kl, ...) are under runs/*/*/seed*/student/runs/."))
    return b


def read_results(sweep_dir: str) -> dict:
    """A sweep's results.json, as `kdistill compare` wrote it; a missing or foreign file is a UserError."""
    path = os.path.join(sweep_dir, "results.json")
    try:
        with open(path, encoding="utf-8") as fh:
            results = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"report: no results.json in {sweep_dir} (run kdistill compare first)") from None
    except json.JSONDecodeError as err:
        raise UserError(f"report: {path} is not valid JSON ({err})") from None
    if not isinstance(results, dict) or not isinstance(results.get("runs"), list):
        raise UserError(f"report: {path} is not a kdistill compare results file (no 'runs' list)")
    return results


def summarise(results: dict, confidence: float = CONFIDENCE) -> dict:
    """Recompute cells, comparisons and verdict from the runs (what `kdistill report` relies on)."""
    results = dict(results)
    results["cells"] = aggregate(results["runs"], confidence)
    metric = headline(results)
    results["comparisons"] = compare_to_hard(results["runs"], metric, confidence)
    results["verdict"] = verdicts(results["cells"], results["comparisons"], results.get("diagnostics", {}),
                                  results.get("validation_is_test", False), metric)
    return results


def write_report(directory: str, results: dict) -> dict:
    """results.json, the plots, report.md and report.html in `directory`; returns the summarised results."""
    os.makedirs(directory, exist_ok=True)
    results = summarise(results)
    files = plot_files(headline(results))
    plots = [files["by_strategy"], files["fidelity"]]
    plot_accuracy_by_strategy(results, os.path.join(directory, plots[0]))
    plot_fidelity(results, os.path.join(directory, plots[1]))
    if plot_accuracy_vs_temperature(results, os.path.join(directory, files["vs_temperature"])):
        plots.append(files["vs_temperature"])
    if plot_accuracy_vs_latency(results, os.path.join(directory, files["vs_latency"])):
        plots.append(files["vs_latency"])
    results["plots"] = plots
    write_text(os.path.join(directory, "results.json"), json.dumps(results, indent=2, default=str))
    blocks = _blocks(results)
    write_text(os.path.join(directory, "report.md"), to_markdown(blocks))
    write_text(os.path.join(directory, "report.html"), to_html(blocks, directory, "kdistill compare"))
    return results


def format_summary(results: dict) -> str:
    """The verdict and a short table, for the terminal."""
    diff_of = {(d["student"], d["setting"]): d for d in results["comparisons"]}
    metric = headline(results)
    column = f"test {_title(metric)} % [95% CI]"
    # A schedule's name makes a long setting ('mixed T=cosine 8→1 a=0.5'): the column widens to hold it.
    width = max([20, *(len(c["setting"]) + 1 for c in results["cells"])])
    lines = [*results["verdict"], "", f"{'student':<12}{'setting':<{width}}{'n':>3}  {column:<26}"
             f"{'minus hard (points)':<30}"]
    for c in results["cells"]:
        d = diff_of.get((c["student"], c["setting"]))
        lines.append(f"{c['student']:<12}{c['setting']:<{width}}{c['n']:>3}  {_ci_text(c.get(metric)):<26}"
                     f"{_diff_text(d) if d else '-':<30}")
    return "\n".join(lines)
