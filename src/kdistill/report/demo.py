"""Tables, plots and the Markdown report of `kdistill demo` (matplotlib comes lazily, through report.common).

Every sentence of the report is derived from the measured numbers in `results` (see `demo.run_demo`): where the
data does not show what the paper did, the report says so and shows the diagnostics.
"""

from __future__ import annotations

import json
import os

from ..files import write_text
from ..metrics import ONE_HOT_TOP_PROB
from .common import pyplot, save_figure

FILES = ("report.md", "results.json", "errors_by_strategy.png", "errors_by_temperature.png",
         "dark_knowledge.png", "few_labels.png")


# ------------------------------------------------------------------------------------------------ formatting


def fmt_ci(ci: dict, digits: int = 1, scale: float = 1.0, suffix: str = "") -> str:
    """'14.2 [12.6, 15.8]' for a t_interval dict (the bare mean when there is a single value)."""
    mean = f"{ci['mean'] * scale:.{digits}f}{suffix}"
    if ci.get("low") is None:
        return mean
    return f"{mean} [{ci['low'] * scale:.{digits}f}, {ci['high'] * scale:.{digits}f}]"


def fmt_share(gap: dict) -> str:
    if gap["share"] is None:
        return "no gap"
    share = f"{gap['share']:.0%}"
    if gap["low"] is None:
        return share
    return f"{share} [{gap['low']:.0%}, {gap['high']:.0%}]"


def gap_verdict(gap: dict, n: int) -> str:
    """What a gap-closed interval says, in words."""
    if gap["share"] is None:
        return "the hard student is not worse than the teacher here, so there is no gap to close"
    if n < 2:
        return "one seed only, so no interval"
    if gap["low"] is None:
        return "the interval is unbounded: the hard student is not clearly worse than the teacher"
    if gap["low"] > 0:
        return f"soft labels close {gap['share']:.0%} of the gap, and the whole interval lies above zero"
    if gap["high"] < 0:
        return "soft labels widen the gap: the student is worse than with hard labels"
    return "no measurable effect: the interval includes 0"


def format_table(results: dict) -> str:
    """The short table `kdistill demo` prints."""
    split, s3, s4, s5 = results["split"], results["soft_vs_hard"], results["dark_knowledge"], results["few_labels"]
    runs, n_test = s3["runs"], split["test"]
    width = 56
    lines = [
        f"kdistill demo: sklearn digits, {split['train']}/{split['validation']}/{n_test} train/val/test "
        f"(seed {split['seed']}), {results['config']['num_seeds']} student seed(s), 95% t-intervals",
        f"{'test errors of ' + str(n_test):<{width}}{'mean [95% CI]':>20}{'gap closed [95% CI]':>24}",
        "-" * (width + 44),
        f"{'teacher CNN':<{width}}{results['teacher']['test_errors']:>20}",
        f"{'student MLP, hard labels':<{width}}{fmt_ci(runs['hard']['test_errors']):>20}",
    ]
    picks = {s3["best_plain"]: "best soft/mixed on val", s3["best_remedy"]: "best out-of-fold on val"}
    picks[s3["chosen"]] = picks.get(s3["chosen"], "") + (", " if s3["chosen"] in picks else "") + "val's pick"
    for key in [*picks, *(k for k in runs if "short budget" in k)]:
        if key == "hard":
            continue
        run = runs[key]
        label = f"{key} ({picks[key]})" if key in picks else key
        gap = fmt_share(run["gap_closed"]) if "gap_closed" in run else ""
        lines.append(f"{label:<{width}}{fmt_ci(run['test_errors']):>20}{gap:>24}")
    if s3["chosen"] == "hard":
        lines.append("validation's pick overall: hard labels")
    dk = s4["by_temperature"][s4["chosen_temperature"]]
    d = s4["digit"]
    lines.append(
        f"dark knowledge, no {d}s seen (soft, T={s4['chosen_temperature']}): test {d}s right "
        f"{fmt_ci(dk['digit_accuracy_before'], 1, 100, '%')} -> {fmt_ci(dk['digit_accuracy_after'], 1, 100, '%')} "
        f"after a prior-matching bias shift (mean {dk['shift']['mean']:+.2f})"
    )
    arms = s5["arms"]
    lines.append(
        f"few labels ({s5['labelled_rows']} labelled rows): test errors hard "
        f"{fmt_ci(arms['hard, labelled few']['test_errors'])}, soft on all rows "
        f"{fmt_ci(arms['soft, all rows, full teacher']['test_errors'])} (few-label teacher: "
        f"{fmt_ci(arms['soft, all rows, few-label teacher']['test_errors'])})"
    )
    lines.append(f"took {results['seconds']:.0f} s; report: {os.path.join(results['config']['output_dir'], 'report.md')}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ writing


def write_report(output_dir: str, results: dict) -> None:
    """results.json, the PNG plots and report.md in `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    write_text(os.path.join(output_dir, "results.json"), json.dumps(results, indent=2, default=str))
    plot_strategies(results, os.path.join(output_dir, "errors_by_strategy.png"))
    plot_temperatures(results, os.path.join(output_dir, "errors_by_temperature.png"))
    plot_dark_knowledge(results, os.path.join(output_dir, "dark_knowledge.png"))
    plot_few_labels(results, os.path.join(output_dir, "few_labels.png"))
    write_text(os.path.join(output_dir, "report.md"), markdown(results))


# ------------------------------------------------------------------------------------------------ plots


def _err(ci: dict) -> list[float]:
    if ci.get("low") is None:
        return [0.0, 0.0]
    return [ci["mean"] - ci["low"], ci["high"] - ci["mean"]]


def plot_strategies(results: dict, path: str) -> None:
    """Test errors of every step-3 setting with its 95% interval, against the teacher and the hard student."""
    plt = pyplot()
    runs = results["soft_vs_hard"]["runs"]
    keys = list(runs)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(keys) + 1.5))
    for i, key in enumerate(keys):
        color = "gray" if "short budget" in key else "black" if key == "hard" else (
            "tab:blue" if key.endswith("[teacher]") else "tab:orange")
        ci = runs[key]["test_errors"]
        ax.errorbar([ci["mean"]], [i], xerr=[[e] for e in _err(ci)], fmt="o", color=color, capsize=3)
    hard = runs["hard"]["test_errors"]
    if hard.get("low") is not None:
        ax.axvspan(hard["low"], hard["high"], color="gray", alpha=0.15, label="hard student, 95% CI")
    ax.axvline(results["teacher"]["test_errors"], color="green", ls="--", label="teacher CNN")
    ax.set_yticks(range(len(keys)), keys)
    ax.invert_yaxis()
    ax.set_xlabel(f"test errors (of {results['split']['test']}), mean and 95% t-interval over seeds")
    ax.set_title("Step 3: student MLP by strategy\n(blue: teacher's labels, orange: out-of-fold, gray: short budget)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8)
    save_figure(fig, path)


def plot_temperatures(results: dict, path: str) -> None:
    """Validation and test errors against temperature, per strategy; the out-of-fold remedy where it was tried."""
    plt = pyplot()
    runs, temps = results["soft_vs_hard"]["runs"], results["config"]["temperatures"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, split in zip(axes, ("validation", "test")):
        metric = f"{split}_errors"
        for strategy, ls in (("soft", "-"), ("mixed", "--")):
            cis = [runs[f"{strategy} T={t:g} [teacher]"][metric] for t in temps]
            ax.errorbar(temps, [c["mean"] for c in cis], yerr=list(zip(*[_err(c) for c in cis])), color="tab:blue",
                        ls=ls, marker="o", capsize=3, label=f"{strategy}, teacher's labels")
            for key, run in runs.items():
                if key.startswith(f"{strategy} ") and key.endswith("[out-of-fold]"):
                    ci = run[metric]
                    ax.errorbar([float(key.split("T=")[1].split()[0])], [ci["mean"]], yerr=[[e] for e in _err(ci)],
                                color="tab:orange", marker="s" if strategy == "soft" else "D", capsize=3,
                                label=f"{strategy}, out-of-fold labels")
        hard = runs["hard"][metric]
        ax.axhline(hard["mean"], color="black", label="hard labels (band: 95% CI)")
        if hard.get("low") is not None:
            ax.axhspan(hard["low"], hard["high"], color="gray", alpha=0.15)
        ax.axhline(results["teacher"][metric], color="green", ls=":", label="teacher CNN")
        ax.set_xscale("log", base=2)
        ax.set_xticks(temps, [f"{t:g}" for t in temps])
        ax.minorticks_off()
        ax.set_xlabel("temperature T")
        ax.set_ylabel(f"{split} errors (of {results['split'][split]})")
        ax.set_title("validation (choices are made here)" if split == "validation" else "test (reported only)")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=8)
    fig.suptitle("Step 3: errors against temperature, mean and 95% t-interval over seeds")
    save_figure(fig, path)


def plot_dark_knowledge(results: dict, path: str) -> None:
    """Accuracy against the omitted digit's bias shift, for the validation-chosen temperature, mean over seeds."""
    import numpy as np

    plt = pyplot()
    s4 = results["dark_knowledge"]
    chosen = s4["by_temperature"][s4["chosen_temperature"]]
    shifts = np.asarray(s4["shifts"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, label, color in (("test_digit", f"test {s4['digit']}s (reported only)", "tab:red"),
                               ("test", "all test digits (reported only)", "tab:purple"),
                               ("validation", "all validation digits (chooses T)", "black")):
        curve = np.mean([s["curves"][name] for s in chosen["seeds"]], axis=0)
        ax.plot(shifts, curve, color=color, label=label)
    for s in chosen["seeds"]:
        ax.axvline(s["shift"], color="gray", ls=":", lw=1)
    ax.axhline(0.95, color="tab:red", ls="--", lw=0.8, label="target: 95% of the omitted digit")
    ax.set_xlabel(f"bias added to the logit of {s4['digit']} (dotted: each seed's prior-matching shift)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Step 4: a student that never saw a {s4['digit']} (soft labels, T={s4['chosen_temperature']})")
    ax.legend(fontsize=8, loc="lower left")
    save_figure(fig, path)


def plot_few_labels(results: dict, path: str) -> None:
    plt = pyplot()
    s5 = results["few_labels"]
    names = list(s5["arms"])
    cis = [s5["arms"][n]["test_errors"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.errorbar([c["mean"] for c in cis], range(len(names)), xerr=list(zip(*[_err(c) for c in cis])), fmt="o", capsize=3)
    ax.axvline(results["teacher"]["test_errors"], color="green", ls="--", label="teacher CNN (all labels)")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"test errors (of {results['split']['test']}), mean and 95% t-interval over seeds")
    ax.set_title(f"Step 5: gold labels for {s5['labelled_rows']} of {s5['labelled_rows'] + s5['unlabelled_rows']} rows")
    ax.legend(fontsize=8)
    save_figure(fig, path)


# ------------------------------------------------------------------------------------------------ Markdown


def _diagnostics_table(diagnostics: dict) -> list[str]:
    temps = list(next(iter(diagnostics.values())))
    lines = [
        "| soft labels | " + " | ".join(f"T={t}" for t in temps) + " | top class wrong |",
        "|---|" + "---|" * (len(temps) + 1),
    ]
    for name, by_t in diagnostics.items():
        cells = [f"{s['mean_top_prob']:.3f} / {s['normalized_entropy']:.2f}" for s in by_t.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {by_t[temps[0]]['teacher_error_rate']:.1%} |")
    return lines


def _one_hot_statement(diagnostics: dict, source: str, name: str) -> str:
    by_t = diagnostics[f"{source}, transfer set"]
    close = [t for t, s in by_t.items() if s["mean_top_prob"] >= ONE_HOT_TOP_PROB]
    if not close:
        return (f"{name.capitalize()} soft labels are not close to one-hot at any temperature measured "
                f"(mean top probability below {ONE_HOT_TOP_PROB} throughout).")
    far = [t for t, s in by_t.items() if s["mean_top_prob"] < ONE_HOT_TOP_PROB]
    text = (f"At T={', '.join(close)}, {name} soft labels are too close to one-hot to carry much beyond the "
            f"gold label (mean top probability {by_t[close[0]]['mean_top_prob']:.3f} at T={close[0]}, at or above "
            f"{ONE_HOT_TOP_PROB})")
    if far:
        text += f"; from T={far[0]} on they are not (mean top probability {by_t[far[0]]['mean_top_prob']:.3f})"
    return text + "."


def _dark_knowledge_tradeoff(s4: dict, n_val: int, n_test: int) -> str:
    """Where, on the mean test curves, the omitted digit reaches 95%, and at what cost (a description only)."""
    import numpy as np

    d = s4["digit"]
    seeds = s4["by_temperature"][s4["chosen_temperature"]]["seeds"]
    shifts = np.asarray(s4["shifts"])
    mean = {name: np.mean([s["curves"][name] for s in seeds], axis=0) for name in ("validation", "test", "test_digit")}
    reached = np.flatnonzero(mean["test_digit"] >= 0.95)
    if not len(reached):
        return f"No shift up to {shifts[-1]:g} gets 95% of the test {d}s right on average (`dark_knowledge.png`)."
    i = reached[0]
    there, chosen = (1 - mean["test"][i]) * n_test, np.mean([s["test_errors_after"] for s in seeds])
    text = (f"Read off the mean test curves in `dark_knowledge.png` (a description, not a choice): 95% of the test "
            f"{d}s needs a shift of {shifts[i]:g}, where the student makes {there:.1f} test errors overall, against "
            f"{chosen:.1f} at the prior-matching shifts. ")
    if there <= chosen:
        return text + (
            f"So a larger shift would have been better on test too: the student reaches the teacher's rate of {d}s "
            f"while it still calls some {d}s something else and some other digits {d}s, so matching the rate "
            "stops short of the shift that gets the digit right.")
    return text + f"A larger shift turns more of the other digits into {d}s than it wins back."


def _diff_verdict(diff: dict) -> str:
    """What a paired 'fewer errors than hard' interval says."""
    if diff.get("low") is None:
        return "one seed only, so no interval"
    if diff["low"] > 0:
        return "makes fewer test errors than the hard student"
    if diff["high"] < 0:
        return "makes more test errors than the hard student"
    return "is not measurably different from the hard student"


def _half_gap(run: dict) -> str:
    gap = run["gap_closed"]
    if gap["share"] is None:
        return "there is no gap to close"
    if gap["low"] is not None and gap["low"] >= 0.5:
        return f"it closes at least half of the gap with confidence ({fmt_share(gap)}; Hinton et al.: about 91%)"
    if gap["share"] >= 0.5:
        return (f"it closes about {gap['share']:.0%} of the gap, but the interval ({fmt_share(gap)}) reaches below "
                "half (the target; Hinton et al.: about 91%)")
    return f"it does not close half of the gap ({fmt_share(gap)}; the target is half, Hinton et al. about 91%)"


def markdown(results: dict) -> str:
    cfg, split, teacher = results["config"], results["split"], results["teacher"]
    s3, s4, s5 = results["soft_vs_hard"], results["dark_knowledge"], results["few_labels"]
    runs, n_test, seeds = s3["runs"], split["test"], cfg["num_seeds"]
    hard = runs["hard"]
    out: list[str] = []
    add = out.append

    add("# kdistill demo: soft vs hard labels on scikit-learn's digits\n")
    add("Replays the experiments of Hinton, Vinyals & Dean (2015), *Distilling the Knowledge in a Neural Network*, "
        "section 3, on the 1,797 8x8 handwritten digits that ship with scikit-learn, offline. Teacher and students "
        "are plain `torch.nn.Module`s trained by kdistill's `DistillationTrainer` with its losses and metrics. "
        f"Command: `kdistill demo --seed {cfg['seed']}{' --quick' if cfg['quick'] else ''}`; "
        f"it took {results['seconds']:.0f} s.\n")
    if cfg["quick"]:
        add("**This is the reduced `--quick` run** (one seed, fewer temperatures and steps): its numbers are a smoke "
            "test, not findings.\n")

    add("## 1. Data\n")
    add(f"Split with seed {split['seed']}, stratified by digit: **{split['train']} train / {split['validation']} "
        f"validation / {n_test} test**. Every choice below (temperature, strategy, remedy, bias shift) is made on "
        f"the validation split; test numbers are only reported. Intervals are 95% Student-t intervals over "
        f"{seeds} student seed(s); they cover training randomness only, not which digits fell into the test split, "
        "so validation and test can disagree by a few errors.\n")

    add("## 2. Teacher and student\n")
    add(f"- Teacher: a CNN ({teacher['parameters']:,} parameters) trained on the gold labels with dropout "
        f"{cfg['teacher_dropout']} and random shifts of up to 1 pixel ({cfg['teacher_steps']} steps of "
        f"{cfg['teacher_batch_size']}): **{teacher['test_errors']} test errors of {n_test}** "
        f"({teacher['validation_errors']} of {split['validation']} on validation).")
    add(f"- Student: an MLP with two hidden layers of {cfg['student_hidden']} ({results['student_parameters']:,} "
        f"parameters), no dropout, no augmentation, {cfg['student_steps']} steps of {cfg['student_batch_size']} "
        f"whatever its loss; `mixed` is {cfg['alpha']} x soft + {1 - cfg['alpha']:g} x hard.\n")

    add("## 3. Soft vs hard labels on the same data\n")
    add(f"| setting | train errors (of {split['train']}) | validation errors | test errors [95% CI] | "
        "agreement with teacher (test) | gap closed [95% CI] |")
    add("|---|---|---|---|---|---|")
    for key, run in runs.items():
        gap = fmt_share(run["gap_closed"]) if "gap_closed" in run else "-"
        add(f"| {key} | {run['train_errors']['mean']:.1f} | {run['validation_errors']['mean']:.1f} | "
            f"{fmt_ci(run['test_errors'])} | {run['agreement']['mean']:.1%} | {gap} |")
    add("")
    add("`[teacher]`: the teacher's logits on its own training rows. `[out-of-fold]`: each training row labelled by "
        f"one of {cfg['folds']} teachers trained on the other folds. `[short budget]`: "
        f"{cfg['short_student_steps']} steps instead of {cfg['student_steps']}. Gap closed = (hard - soft) / "
        "(hard - teacher) test errors, paired by seed, with a Fieller interval; short-budget runs are compared with "
        "the short-budget hard student. Plots: `errors_by_strategy.png`, `errors_by_temperature.png`.\n")

    add(f"**The gap.** The hard-label student makes {fmt_ci(hard['test_errors'])} test errors, the teacher "
        f"{teacher['test_errors']}: a gap of {hard['test_errors']['mean'] - teacher['test_errors']:.1f} errors "
        "(Hinton et al. on MNIST: 146 vs 67).\n")
    best = runs[s3["best_plain"]]
    add(f"**Soft labels.** Validation prefers `{s3['best_plain']}` among the soft and mixed settings "
        f"({best['validation_errors']['mean']:.1f} validation errors, hard labels "
        f"{hard['validation_errors']['mean']:.1f}). On test it makes {fmt_ci(best['test_errors'])} errors, gap "
        f"closed {fmt_share(best['gap_closed'])}: {gap_verdict(best['gap_closed'], seeds)}.\n")

    t_best = s3["best_plain"].split("T=")[1].split()[0]
    oof = {k: r for k, r in runs.items() if k.endswith("[out-of-fold]")}
    lines = [f"`{k}` {fmt_ci(r['test_errors'])} test errors ({r['validation_errors']['mean']:.1f} on validation, "
             f"gap closed {fmt_share(r['gap_closed'])})" for k, r in oof.items()]
    best_oof = runs[s3["best_remedy"]]
    if s3["chosen"] in oof:
        verdict = "Validation prefers them to the teacher's own labels, so they are the pick below."
    else:
        verdict = (f"On validation they do not beat the teacher's own labels ({best_oof['validation_errors']['mean']:.1f} "
                   f"against {best['validation_errors']['mean']:.1f} errors), so the pick stays with the teacher's "
                   "labels")
        verdict += (", although on test they happen to do better, within the intervals." if
                    best_oof["test_errors"]["mean"] < best["test_errors"]["mean"] else ".")
    add(f"**Remedy: out-of-fold soft labels**, at validation's temperature T={t_best}: {'; '.join(lines)}. {verdict}\n")

    short = {k: r for k, r in runs.items() if "short budget" in k}
    if len(short) == 2:
        (hard_key, hard_short), (soft_key, soft_short) = short.items()
        long_key = soft_key.replace("teacher, short budget", "teacher")
        add(f"**Remedy: train long enough.** With {cfg['short_student_steps']} steps, `{hard_key}` makes "
            f"{fmt_ci(hard_short['test_errors'])} test errors and `{soft_key}` {fmt_ci(soft_short['test_errors'])} "
            f"({soft_short['train_errors']['mean']:.1f} errors on its own training rows, against "
            f"{runs[long_key]['train_errors']['mean']:.1f} after {cfg['student_steps']} steps and "
            f"{hard_short['train_errors']['mean']:.1f} for hard labels). "
            + ("Soft targets are slower to fit than one-hot ones: a budget that is enough for hard labels leaves the "
               "soft student short of its transfer set, and a comparison at that budget would conclude that soft "
               "labels do not help. Check the soft student's training errors before judging.\n"
               if soft_short["test_errors"]["mean"] >= hard_short["test_errors"]["mean"] > runs[long_key]["test_errors"]["mean"]
               else "Here the budget does not change the comparison's direction.\n"))

    chosen = s3["chosen"]
    if chosen == "hard":
        add("**Validation's pick overall is hard labels**: no soft-label setting beat them on validation.\n")
    else:
        add(f"**Validation's pick overall: `{chosen}`**, {fmt_ci(runs[chosen]['test_errors'])} test errors: "
            f"{_half_gap(runs[chosen])}.\n")

    add("### Soft-label diagnostics\n")
    add("Mean top-class probability / normalised entropy (0 = one-hot, 1 = uniform) of the soft labels at each "
        "temperature; last column: share of rows whose soft label's top class is not the gold label.\n")
    diag = s3["diagnostics"]
    out.extend(_diagnostics_table(diag))
    add("")
    seen = diag["teacher, transfer set"]["1"]
    unseen = diag["teacher, validation (unseen)"]["1"]
    oof1 = diag["out-of-fold, transfer set"]["1"]
    add(_one_hot_statement(diag, "teacher", "the teacher's") + " "
        + _one_hot_statement(diag, "out-of-fold", "the out-of-fold") + "\n")
    surer = seen["mean_top_prob"] - unseen["mean_top_prob"]
    add(f"At T=1 the teacher's mean top probability is {seen['mean_top_prob']:.3f} on the rows it trained on and "
        f"{unseen['mean_top_prob']:.3f} on validation rows it never saw: it is "
        + ("barely surer of the rows it learnt from (dropout and shifts kept it from memorising them), "
           if surer < 0.02 else "noticeably surer of the rows it learnt from, ")
        + f"and out-of-fold labels bring the transfer set to {oof1['mean_top_prob']:.3f}, with more labels whose top "
        f"class is wrong ({oof1['teacher_error_rate']:.1%} against {seen['teacher_error_rate']:.1%}).\n")

    gap = runs[chosen]["gap_closed"] if chosen != "hard" else None
    if gap and gap["low"] is not None and gap["low"] > 0:
        add(f"**Reading.** Here soft labels help, once the student is trained long enough: the pick closes "
            f"{fmt_share(gap)} of the gap. It agrees with the teacher on {runs[chosen]['agreement']['mean']:.1%} of the "
            f"test digits, against {hard['agreement']['mean']:.1%} for the hard-label student: at T=2 to 8 the soft "
            "labels carry how the teacher ranks the wrong digits, which one-hot labels do not, and the student "
            "follows the teacher more closely on digits neither was trained on.\n")
    else:
        add("**Reading: soft labels do not measurably help here.** "
            f"The hard student fits its transfer set ({hard['train_errors']['mean']:.1f} training errors), so soft "
            "labels on those same rows can only reshape its outputs on digits it already gets right; see the "
            "diagnostics above for how far from one-hot the labels are, and the training errors for whether the "
            "soft students fit them.\n")

    add(f"## 4. Dark knowledge: a student that never saw a {s4['digit']}\n")
    add(f"All {s4['digit']}s are removed from the student's transfer set ({s4['transfer_rows']} rows left); it "
        f"learns from the teacher's soft labels only. Then a bias is added to its logit for {s4['digit']}, set per "
        f"seed by prior matching: the smallest shift at which the student calls as many of the "
        f"{s4['unlabelled_rows']} non-test digits (train and validation, labels unused) a {s4['digit']} as the "
        f"teacher does. Maximising validation accuracy instead rests on the {s4['validation_digit_rows']} "
        f"{s4['digit']}s of the validation split and is flat over a wide range of shifts; its result is in the "
        f"last column for comparison. Test: {s4['test_digit_rows']} {s4['digit']}s.\n")
    add(f"| T | validation accuracy after shift | shift | test {s4['digit']}s right before | after | "
        f"test errors before | after | shift / {s4['digit']}s right, by validation accuracy |")
    add("|---|---|---|---|---|---|---|---|")
    for t, r in s4["by_temperature"].items():
        add(f"| {t} | {fmt_ci(r['validation_accuracy_after'], 1, 100, '%')} | {r['shift']['mean']:+.2f} | "
            f"{fmt_ci(r['digit_accuracy_before'], 1, 100, '%')} | {fmt_ci(r['digit_accuracy_after'], 1, 100, '%')} | "
            f"{r['test_errors_before']['mean']:.1f} | {r['test_errors_after']['mean']:.1f} | "
            f"{r['shift_by_validation_accuracy']['mean']:+.2f} / "
            f"{fmt_ci(r['digit_accuracy_after_by_validation_accuracy'], 1, 100, '%')} |")
    add("")
    dk = s4["by_temperature"][s4["chosen_temperature"]]
    after = dk["digit_accuracy_after"]
    met = after["mean"] >= 0.95
    add(f"Chosen on validation: T={s4['chosen_temperature']}. A net that never saw a {s4['digit']} gets "
        f"**{after['mean']:.1%} of the test {s4['digit']}s right after the shift** "
        f"({dk['digit_accuracy_before']['mean']:.1%} before; chance is 10%), "
        f"{'meeting' if met else 'short of'} the 95% target (Hinton et al.: 98.6%)"
        + (f" on average; the 95% interval reaches down to {after['low']:.1%}. " if met and after.get("low") is not None
           and after["low"] < 0.95 else ". ")
        + ("" if met else _dark_knowledge_tradeoff(s4, split["validation"], n_test)) + "\n")

    add("## 5. Few labels\n")
    arms = s5["arms"]
    add(f"Gold labels are kept for {s5['labelled_rows']} training rows ({cfg['label_fraction']:.0%}); the other "
        f"{s5['unlabelled_rows']} are unlabelled transfer data. Soft students use T={s5['temperature']:g} "
        "(step 3's validation choice) and never see a gold label.\n")
    add("| student | test errors [95% CI] | fewer errors than the hard student, paired [95% CI] |")
    add("|---|---|---|")
    for name, arm in arms.items():
        diff = fmt_ci(arm["fewer_errors_than_hard"]) if "fewer_errors_than_hard" in arm else "-"
        add(f"| {name} | {fmt_ci(arm['test_errors'])} | {diff} |")
    add("")
    for name, who in (("soft, all rows, full teacher", "the full teacher"),
                      ("soft, all rows, few-label teacher", "a teacher that saw only the labelled few")):
        add(f"- The soft student taught by {who} {_diff_verdict(arms[name]['fewer_errors_than_hard'])}.")
    add(f"\nThe full teacher learnt from all {s5['labelled_rows'] + s5['unlabelled_rows']} gold labels, as in Hinton "
        "et al.'s speech experiment (soft targets on 3% of the data kept most of the full model's accuracy): this "
        "measures how much of a trained teacher's knowledge unlabelled rows carry, not semi-supervised learning from "
        f"{s5['labelled_rows']} labels. The few-label teacher ({s5['few_label_teacher_test_errors']} test errors) is "
        "that stricter check. The full-teacher arm is step 3's soft student at this temperature: the soft loss never "
        "reads the gold labels, so hiding them trains the same students.\n")

    add("## Files\n")
    add("`results.json` (every number above, per seed), `errors_by_strategy.png`, `errors_by_temperature.png`, "
        "`dark_knowledge.png`, `few_labels.png`; `teachers/` (weights) and `soft_labels/` (the teachers' logits, "
        "fingerprinted, as the students read them).")
    return "\n".join(out) + "\n"
