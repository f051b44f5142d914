"""The model card and the tables of an export: what `kdistill export` writes into README.md and prints.

Pure functions of the export report (a dict, see export.py) and the run's config; nothing here runs a model.
"""

import json
import os

from ..schedules import parse as parse_schedule
from .common import teachers_text

PARITY_BOUND = 1e-4  # max abs difference of fp32 ONNX logits from PyTorch's
INT8_AGREEMENT_TARGET = 0.995  # top-1 agreement of int8 with fp32
# Published figures for dynamic int8 against fp32 on CPU, quoted beside ours (ranges over the sources' models).
ANCHORS = {
    "latency_speedup": "about 1.5-2x lower latency",
    "file_ratio": "about 1.6-2.4x smaller file",
    "accuracy": "within about 1 point",
    "sources": [
        "PyTorch tutorial '(beta) Dynamic Quantization on BERT' "
        "(https://pytorch.org/tutorials/intermediate/dynamic_quantization_bert_tutorial.html)",
        "ONNX Runtime / Hugging Face blog 'Faster and smaller quantized NLP with Hugging Face and ONNX Runtime' "
        "(https://medium.com/microsoftazure/faster-and-smaller-quantized-nlp-with-hugging-face-and-onnx-runtime-ec5525473bb7)",
    ],
}

SPEED_ROWS = (
    ("teacher", "PyTorch"), ("teacher", "ONNX fp32"), ("teacher", "ONNX int8"),
    ("student", "PyTorch"), ("student", "ONNX fp32"), ("student", "ONNX int8"),
)


def speed_table(report: dict) -> str:
    """Markdown table: size, latency, throughput and speed-up over the PyTorch teacher, for each model timed."""
    speed, sizes = report["speed"]["models"], report["sizes"]
    base = speed.get("teacher PyTorch")
    lines = [
        "| model | runtime | size (MB) | latency b=1 median (ms) | p95 (ms) | throughput b=64 (rows/s) | speed-up b=1 | speed-up b=64 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for who, runtime in SPEED_ROWS:
        name = f"{who} {runtime}"
        if name not in speed:
            continue
        s = speed[name]
        up1 = f"{base['latency_ms_b1'] / s['latency_ms_b1']:.2f}x" if base else "-"
        up64 = f"{s['throughput_b64'] / base['throughput_b64']:.2f}x" if base else "-"
        size = f"{sizes[name] / 1e6:.1f}" if name in sizes else "-"
        lines.append(f"| {who} | {runtime} | {size} | {s['latency_ms_b1']:.2f} | {s['latency_ms_b1_p95']:.2f} | "
                     f"{s['throughput_b64']:.1f} | {up1} | {up64} |")
    return "\n".join(lines)


def summary(report: dict) -> dict:
    """The ratios a reader wants first (all from one run, so they hold while absolute times drift)."""
    out: dict = {"fp32_max_abs_diff": report["parity"]["max_abs_diff"], "parity_passed": report["parity"]["passed"]}
    sizes, speed = report["sizes"], report.get("speed", {}).get("models", {})
    if "int8" in report:
        i8 = report["int8"]
        out.update(int8_fp32_agreement=i8["agreement_with_fp32"], int8_accuracy_change_points=i8["accuracy_change_points"],
                   fp32_accuracy=i8["accuracy_fp32"], int8_accuracy=i8["accuracy_int8"],
                   int8_over_fp32_file_ratio=sizes["student ONNX fp32"] / sizes["student ONNX int8"])
        if "flips" in i8:
            out.update(int8_flips=i8["flips"]["disagreements"], int8_flips_largest_fp32_margin=i8["flips"]["largest_margin"],
                       rows_within_that_margin=i8["flips"]["rows_within"])
    pairs = {
        "int8_over_fp32": ("student ONNX fp32", "student ONNX int8"),
        "fp32_onnx_over_pytorch": ("student PyTorch", "student ONNX fp32"),
        "student_over_teacher": ("teacher PyTorch", "student PyTorch"),
        "student_fp32_over_teacher_fp32_onnx": ("teacher ONNX fp32", "student ONNX fp32"),
        "student_int8_over_teacher": ("teacher PyTorch", "student ONNX int8"),
        "student_int8_over_teacher_int8": ("teacher ONNX int8", "student ONNX int8"),
    }
    for key, (slow, fast) in pairs.items():
        if slow in speed and fast in speed:
            a, b = speed[slow], speed[fast]
            out[f"{key}_latency_speedup"] = a["latency_ms_b1"] / b["latency_ms_b1"]
            out[f"{key}_throughput_speedup"] = b["throughput_b64"] / a["throughput_b64"]
            if "latency_ms_b1_rounds" in a and "latency_ms_b1_rounds" in b:  # reports from before 2026-11-28 lack them
                out[f"{key}_latency_speedup_range"] = round_ratio_range(a["latency_ms_b1_rounds"], b["latency_ms_b1_rounds"])
                out[f"{key}_throughput_speedup_range"] = round_ratio_range(b["throughput_b64_rounds"],
                                                                           a["throughput_b64_rounds"])
    return out


def round_ratio_range(numerator: list[float], denominator: list[float]) -> list[float]:
    """[lowest, highest] of a ratio taken round by round (round i of one model against round i of the other).

    The models are timed round-robin, so round i of each saw the same moment of the machine: the spread of these
    ratios is how far one run's noise moves the ratio, which the median alone hides.
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"need the same number of rounds on both sides, got {len(numerator)} and {len(denominator)}")
    ratios = [n / d for n, d in zip(numerator, denominator)]
    return [min(ratios), max(ratios)]


def spread(summary: dict, key: str) -> str:
    """' (1.52x to 1.80x round by round)' when the summary has the ratio's per-round range, else ''."""
    lo_hi = summary.get(f"{key}_range")
    return f" ({lo_hi[0]:.2f}x to {lo_hi[1]:.2f}x round by round)" if lo_hi else ""


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


METRIC_KEYS = ("accuracy", "macro_f1", "f1", "ece", "agreement", "kl_to_teacher")
METRIC_TITLES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "f1": "entity F1 (seqeval, strict IOB2)",
                 "ece": "ECE (15 bins)", "agreement": "agreement with teacher", "kl_to_teacher": "KL(teacher ‖ student)"}


def model_facts(config: dict, evaluation: dict | None) -> dict:
    """Where a student came from and how good it is, as data: the export report's "model" (what `kdistill serve`'s
    GET /model answers beside the export's own facts).

    Args:
        config: the run's run_config.json, by section.
        evaluation: the run's eval.json, or None.
    """
    data, teacher, student, distill = (config.get(k, {}) for k in ("data", "teacher", "student", "distill"))
    facts = {
        "task": data.get("task", "sequence_classification"),
        "teacher": teacher.get("teacher_model"),
        "student_init": student.get("student_init"),
        "student_layers": student.get("student_layers"),
        "strategy": distill.get("strategy"),
        "temperature": distill.get("temperature"),
        "alpha": distill.get("alpha"),
        # A scheduled one's spec (its starting value is above), as the config writes it.
        **{key: json.loads(distill[key]) for key in ("temperature_schedule", "alpha_schedule") if distill.get(key)},
        "num_train_epochs": distill.get("num_train_epochs"),
        "train_data": data.get("train_file") or data.get("dataset_name"),
        "transfer_data": data.get("transfer_file"),
    }
    if evaluation:
        facts["metrics"] = {"split": evaluation.get("split"), "rows": evaluation.get("rows"),
                            **{side: {k: evaluation[side][k] for k in METRIC_KEYS if k in evaluation.get(side, {})}
                               for side in ("student", "teacher")}}
    return facts


def _setting(distill: dict, name: str) -> str:
    """The run's temperature or alpha as run_config.json records it: its number, or its schedule's name."""
    spec = distill.get(f"{name}_schedule")
    return parse_schedule(json.loads(spec)).name if spec else str(distill.get(name))


def model_card(report: dict, config: dict, evaluation: dict | None) -> str:
    """The export directory's README.md.

    Args:
        config: the run's run_config.json, by section.
        evaluation: the run's eval.json, or None.
    """
    data, teacher, student, distill = (config.get(k, {}) for k in ("data", "teacher", "student", "distill"))
    strategy = distill.get("strategy", "?")
    lines = [
        f"# {os.path.basename(os.path.abspath(report['run_dir']))}: a distilled text classifier (ONNX)",
        "",
        f"Made by `{report['command']}` on {report['date']} ({report['machine']}).",
        "",
        "## Model",
        "",
        f"- **Teacher**: `{teacher.get('teacher_model')}`"
        + (f", fine-tuned on the training data by `kdistill teach` (teacher_epochs {teacher.get('teacher_epochs')})"
           if teacher.get("teacher_train", True) else " (already fine-tuned)")
        + (f"; {report['parameters']['teacher']:,} parameters" if "teacher" in report["parameters"] else ""),
        f"- **Student**: `{student.get('student_init')}`"
        + (f", teacher layers {student.get('student_layers')}" if student.get("student_layers") else "")
        + (f", {student.get('student_num_layers')} evenly spaced teacher layers" if student.get("student_num_layers") else "")
        + f"; {report['parameters']['student']:,} parameters",
        f"- **Distillation**: strategy `{strategy}`, temperature {_setting(distill, 'temperature')}, alpha "
        f"{_setting(distill, 'alpha')}"
        + (" (hard labels only: temperature and alpha unused)" if strategy == "hard" else "")
        + f"; num_train_epochs {distill.get('num_train_epochs')}, learning rate {distill.get('learning_rate')}",
        f"- **Data**: trained on `{data.get('train_file') or data.get('dataset_name')}`"
        + (f" (+ unlabelled transfer data `{data.get('transfer_file')}`)" if data.get("transfer_file") else "")
        + f"; text column `{data.get('text_column')}`, max {report['max_length']} tokens",
        f"- **Labels**: {', '.join(f'{k} (id {v})' for k, v in report['labels'].items())}",
        "",
    ]
    ev = evaluation
    if ev:
        # The metrics this task's eval.json has (a tagger's: entity F1, no macro-F1).
        keys = [(METRIC_TITLES[k], k) for k in METRIC_KEYS if k in ev.get("student", {}) or k in ev.get("teacher", {})]
        lines += [f"## Metrics (`eval.json`: {ev.get('split')}, {ev.get('rows')} rows, PyTorch)", "",
                  "| metric | student | teacher |", "|---|---|---|"]
        for title, key in keys:
            cells = [f"{side[key]:.4f}" if key in side else "-" for side in (ev["student"], ev["teacher"])]
            lines.append(f"| {title} | {cells[0]} | {cells[1]} |")
        ensemble = teachers_text(ev, "f1" if "f1" in ev["teacher"] else "accuracy")
        if ensemble:
            lines += ["", f"The teacher column is the ensemble of {len(ev['teachers'])} {ensemble}."]
        lines.append("")
    else:
        lines += ["## Metrics", "", "The run has no `eval.json` (run `kdistill eval` for quality and fidelity).", ""]
    p = report["parity"]
    lines += [
        f"## Export checks ({report['eval']['rows']} rows of `{report['eval']['source']}`)",
        "",
        f"- **fp32 parity**: max |logit(ONNX) − logit(PyTorch)| = {p['max_abs_diff']:.2e} "
        f"(bound {p['bound']:g}): **{'passed' if p['passed'] else 'FAILED'}**; top-1 agreement {pct(p['top1_agreement'])}; "
        f"accuracy on these {report['eval'].get('item', 'row')}s {100 * report['accuracy_pytorch']:.2f} (PyTorch).",
    ]
    if "int8" in report:
        i8 = report["int8"]
        lines += [
            f"- **int8 vs fp32**: top-1 agreement {pct(i8['agreement_with_fp32'])} (target {pct(INT8_AGREEMENT_TARGET)}: "
            f"{'met' if i8['agreement_met'] else 'NOT met'}); accuracy {100 * i8['accuracy_fp32']:.2f} (fp32) → "
            f"{100 * i8['accuracy_int8']:.2f} (int8), {i8['accuracy_change_points']:+.2f} points; "
            f"max |logit difference| {i8['max_abs_logit_diff']:.3f}. Dynamic quantisation scales activations per "
            "batch, so an int8 answer can shift slightly with the batch a text is scored in.",
        ]
        if i8.get("flips", {}).get("disagreements"):
            lines.append("- **Where int8 differs**: " + flips_text(i8["flips"]) + ".")
    if "teacher_parity" in report:
        lines.append(f"- **teacher fp32 parity**: {report['teacher_parity']['max_abs_diff']:.2e} "
                     f"({'passed' if report['teacher_parity']['passed'] else 'FAILED'}).")
    lines.append("")
    lines += ["## Size and CPU speed", ""]
    if report.get("speed"):
        sp = report["speed"]
        lines += [
            f"One run, {sp['threads']} thread(s) for PyTorch and ONNX Runtime alike, {sp['rounds']} round-robin rounds "
            f"of {sp['batches']} timed batches (median over rounds); real rows of the evaluation file. Absolute times "
            "depend on the machine and its load; the ratios are what carries over.",
            "",
            speed_table(report),
            "",
        ]
    else:
        lines += ["Speed was not measured (`--speed_batches 0`).", ""]
        lines += ["| file | MB |", "|---|---|"] + [f"| {k} | {v / 1e6:.1f} |" for k, v in report["sizes"].items()] + [""]
    s = report["summary"]
    if "int8" in report:
        measured = f"int8 file {s['int8_over_fp32_file_ratio']:.2f}x smaller"
        if "int8_over_fp32_latency_speedup" in s:
            measured = (f"int8 {s['int8_over_fp32_latency_speedup']:.2f}x lower latency at batch 1"
                        f"{spread(s, 'int8_over_fp32_latency_speedup')} and "
                        f"{s['int8_over_fp32_throughput_speedup']:.2f}x the throughput at batch 64"
                        f"{spread(s, 'int8_over_fp32_throughput_speedup')}, ") + measured
        lines += [
            f"Measured here: {measured}, {s['int8_accuracy_change_points']:+.2f} accuracy points.",
            f"Published anchors for dynamic int8 against fp32 on CPU: {ANCHORS['latency_speedup']}, "
            f"{ANCHORS['file_ratio']}, accuracy {ANCHORS['accuracy']} ("
            + "; ".join(ANCHORS["sources"]) + ").",
            "",
        ]
    lines += [
        "## Use",
        "",
        "```",
        f"kdistill predict {report['out']} \"a text to classify\"{' --int8' if 'int8' in report else ''}",
        "```",
        "",
        "Or with ONNX Runtime alone: tokenise with the tokenizer files here (truncate to "
        f"{report['max_length']} tokens), feed {', '.join(report['inputs'])} as int64 [batch, sequence] arrays, "
        "and take the softmax of `logits`; `labels.json` maps label names to ids.",
        "",
    ]
    return "\n".join(lines)


def flips_text(flips: dict) -> str:
    """One sentence on the rows where int8 and fp32 disagree (from metrics.disagreement_margins)."""
    return (f"the {flips['disagreements']} differing rows all have an fp32 margin (top-1 minus top-2 probability) of "
            f"at most {flips['largest_margin']:.3f}, and {flips['rows_within']} of the {flips['rows']} rows "
            f"({100 * flips['rows_within'] / flips['rows']:.1f}%) are that close to a tie")


def summary_text(report: dict) -> str:
    """What the user sees at the end of `kdistill export`."""
    lines = []
    p = report["parity"]
    lines.append(f"fp32 parity: max |ONNX - PyTorch| = {p['max_abs_diff']:.2e} on {report['eval']['rows']} rows "
                 f"({'passed' if p['passed'] else 'FAILED'}, bound {p['bound']:g})")
    if "int8" in report:
        i8 = report["int8"]
        lines.append(f"int8: agreement with fp32 {pct(i8['agreement_with_fp32'])} (target {pct(INT8_AGREEMENT_TARGET)}, "
                     f"{'met' if i8['agreement_met'] else 'NOT met'}); accuracy {100 * i8['accuracy_fp32']:.2f} -> "
                     f"{100 * i8['accuracy_int8']:.2f} ({i8['accuracy_change_points']:+.2f} points)")
        if i8.get("flips", {}).get("disagreements"):
            lines.append("int8 differs from fp32 only near ties: " + flips_text(i8["flips"]))
    if report.get("speed"):
        lines.append(speed_table(report))
        s = report["summary"]
        if "int8_over_fp32_latency_speedup" in s:
            lines.append(f"int8 over fp32 student: {s['int8_over_fp32_latency_speedup']:.2f}x at batch 1"
                         f"{spread(s, 'int8_over_fp32_latency_speedup')}, {s['int8_over_fp32_throughput_speedup']:.2f}x "
                         f"at batch 64{spread(s, 'int8_over_fp32_throughput_speedup')}")
        lines.append(f"published anchors, dynamic int8 vs fp32 on CPU: {ANCHORS['latency_speedup']}, "
                     f"{ANCHORS['file_ratio']}, accuracy {ANCHORS['accuracy']} "
                     "(PyTorch BERT dynamic quantisation tutorial; ONNX Runtime blog)")
    lines.append(f"written: {report['out']}")
    return "\n".join(lines)
