"""Deployment: a run's student as ONNX (fp32 and dynamic int8), checked against PyTorch, timed, with a model card.

    kdistill export  RUN_DIR --format onnx [--int8] [--teacher] [--out DIR] [--rows N] [--speed_batches N] [--no_check]
    kdistill predict MODEL_DIR "some text" [...] | --file PATH  [--int8] [--json]

An export directory (default RUN_DIR/export) holds:

    model.onnx          the student, fp32: inputs input_ids, attention_mask (and token_type_ids when the tokenizer
                        makes them), each [batch, sequence] with both axes dynamic; output logits [batch, labels]
    model.int8.onnx     (--int8) dynamic int8 quantisation of model.onnx (onnxruntime.quantization.quantize_dynamic)
    config.json, tokenizer files, labels.json
    teacher/            (--teacher) the teacher exported the same way, so student and teacher can be timed on one runtime
    export_report.json  parity, int8 fidelity and accuracy, sizes, speed, versions, the command
    README.md           the model card

Checks. The fp32 ONNX logits must match PyTorch's within 1e-4 (max abs) on the run's evaluation rows; a miss makes
the command exit 1 (files are kept for inspection, the report says FAILED) unless --no_check. The int8 model's top-1
agreement with fp32 is reported against a 99.5% target, beside both accuracies: quantisation is a trade-off the
user judges, so a miss there is a warning, not a failure.

The exporter is torch.export-based (`torch.onnx.export(..., dynamo=True)`). The TorchScript exporter
(dynamo=False) traces transformers 5's attention-mask construction wrongly: on the SST-2 MiniLM student its logits
were off by 0.39 (measured 2026-11-28, torch 2.13.0, transformers 5.24.0); the dynamo export matched to 1.4e-6.
The graph uses ONNX opset 23, where scaled-dot-product attention is one `Attention` node instead of about ten
(MatMul, Mul, Softmax, Where, ...): on the SST-2 2-layer student that takes the graph from 121 to 88 nodes, gives the
same predictions, and was 3-12% faster than opset 20 (fp32 and int8, batch 1 and 64) in one round-robin run on
2 cores (benchmarks/onnx_opset.py).
"""

import contextlib
import datetime
import importlib.util
import inspect
import json
import logging
import os
import platform
import shlex
import statistics
import tempfile
import warnings
from dataclasses import dataclass, fields
from importlib import metadata

import numpy as np
import torch

from . import metrics
from .config import DataConfig
from .data import LABELS_FILE, encode_labels, load_split, tokenize
from .errors import UserError
from .evaluation import measure_speed, size_on_disk
from .files import atomic_write, write_json, write_text
from .report.model_card import ANCHORS, INT8_AGREEMENT_TARGET, PARITY_BOUND, model_card, pct, summary, summary_text
from .soft_labels import predict_logits
from .students import count_parameters, load_classifier, load_tokenizer, resolve_model_path

logger = logging.getLogger(__name__)

FORMATS = ("onnx",)
FP32_FILE, INT8_FILE, REPORT_FILE, CARD_FILE = "model.onnx", "model.int8.onnx", "export_report.json", "README.md"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 23  # the first opset with a standard Attention operator
# --int8 quantises every operator type ONNX Runtime's dynamic quantiser knows (MatMul, Gather, LSTM, ...) except
# "Attention": the quantiser takes the standard opset-23 Attention node for its own com.microsoft Attention and writes
# a QAttention that does not load. Attention has no weights of its own here (the projections are MatMuls), so the
# int8 graph is the same as before opset 23, and so are its logits (checked on the SST-2 student: same 8 flips).
INT8_SKIPPED_OPS = ("Attention",)
# --------------------------------------------------------------------------------------------------- the run directory


@dataclass
class Run:
    """What export needs from a kdistill run directory."""

    directory: str
    config: dict  # run_config.json, by section
    label2id: dict[str, int]
    evaluation: dict | None  # eval.json, if the run was evaluated

    @property
    def student_dir(self) -> str:
        return os.path.join(self.directory, "student")


def load_run(run_dir: str) -> Run:
    """Read a run directory; a directory that is not a finished kdistill run is a UserError naming what is missing."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: no such directory")
    needed = ["run_config.json", LABELS_FILE, os.path.join("student", "config.json")]
    missing = [n for n in needed if not os.path.isfile(os.path.join(run_dir, n))]
    if missing:
        raise UserError(
            f"{run_dir} is not a kdistill run directory (no {', '.join(missing)}); "
            "give the output_dir of a finished `kdistill run` or `kdistill distill`"
        )
    config = _read_json(os.path.join(run_dir, "run_config.json"))
    label2id = {str(k): int(v) for k, v in _read_json(os.path.join(run_dir, LABELS_FILE)).items()}
    eval_path = os.path.join(run_dir, "eval.json")
    evaluation = _read_json(eval_path) if os.path.isfile(eval_path) else None
    return Run(run_dir, config, label2id, evaluation)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable ({str(err).splitlines()[0]})") from None


def locate(path: str, run: Run) -> str:
    """A path stored in run_config.json, found from here.

    Paths there are relative to the directory the run was started from. When that is not the current directory,
    it is recovered from where the run directory now lies: RUN_DIR ends with the stored output_dir.
    """
    if os.path.isabs(path) or os.path.exists(path):
        return path
    stored = os.path.normpath(run.config.get("distill", {}).get("output_dir") or "")
    here = os.path.abspath(run.directory)
    if stored and not os.path.isabs(stored) and here.endswith(os.sep + stored):
        candidate = os.path.join(here[: -len(stored)], path)
        if os.path.exists(candidate):
            return os.path.normpath(candidate)
    return path


def teacher_dir(run: Run) -> str:
    """The run's teacher, as pipeline.teacher_dir finds it, but from RUN_DIR (the run may have moved)."""
    teacher = run.config.get("teacher", {})
    if teacher.get("teacher_train", True):
        path = os.path.join(run.directory, "teacher")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"no fine-tuned teacher in {path}; the speed report and --teacher need it (or --speed_batches 0)")
        return path
    return locate(resolve_model_path(teacher.get("teacher_model", "")), run)


def data_config(run: Run, data_file: str | None = None) -> DataConfig:
    """The run's data section, with its files found from here; `data_file` replaces the evaluation file."""
    known = {f.name for f in fields(DataConfig)}
    values = {k: v for k, v in run.config.get("data", {}).items() if k in known}
    for key in ("train_file", "validation_file", "test_file", "transfer_file"):
        if values.get(key):
            values[key] = locate(values[key], run)
    if data_file is not None:
        values["test_file"] = data_file
    return DataConfig(**values)


def eval_rows(data: DataConfig, tokenizer, label2id: dict[str, int], limit: int) -> tuple[list[dict], torch.Tensor, str]:
    """The first `limit` rows of the run's evaluation split, tokenised: (model rows, labels, source)."""
    table = load_split(data, "test")
    source = data.test_file or data.validation_file or f"{data.dataset_name}/{data.dataset_config_name}"
    if table is None:
        raise UserError("the run has no test_file or validation_file to check the export on; pass --data FILE")
    table = table.select(range(min(limit, len(table))))
    labels = encode_labels(table, data, label2id, source)
    encoded = tokenize(table, tokenizer, data, labels)
    return model_rows(encoded, tokenizer), torch.tensor(labels), source


def model_rows(table, tokenizer) -> list[dict]:
    """The model-input columns of a tokenised table as a list of row dicts (read column-wise: row access is slow)."""
    names = [k for k in tokenizer.model_input_names if k in table.column_names]
    return [dict(zip(names, values)) for values in zip(*(table[k][:] for k in names))]


def pad(tokenizer):
    return lambda rows: dict(tokenizer.pad(rows, return_tensors="pt"))


# ----------------------------------------------------------------------------------------------- ONNX: export and run


class _LogitsOnly(torch.nn.Module):
    """A classifier seen as a function of its input tensors that returns only the logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits


def input_names(model: torch.nn.Module, tokenizer) -> list[str]:
    """The inputs the exported graph takes: those the tokenizer makes and the model accepts (attention_mask always)."""
    accepted = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names and "token_type_ids" in accepted:
        names.append("token_type_ids")
    return names


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter and its graph passes log every rewrite at INFO and warn about unused axis names; keep it for DEBUG."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "torch.__trace", "onnxscript", "onnx_ir", "root")
    loggers = [logging.getLogger(n if n != "root" else None) for n in names]
    levels = [lg.level for lg in loggers]
    debug = logger.isEnabledFor(logging.DEBUG)
    for lg in loggers:
        lg.setLevel(logging.DEBUG if debug else logging.ERROR)
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(model: torch.nn.Module, tokenizer, path: str, opset: int = OPSET) -> list[str]:
    """Write `model` to `path` as ONNX with dynamic batch and sequence axes; returns the graph's input names."""
    names = input_names(model, tokenizer)
    # Example sizes of 0 or 1 would be specialised by torch.export, so the example is 2 rows of unequal length.
    example = tokenizer(["an example sentence of several words", "short"], padding=True, return_tensors="pt")
    kwargs = {n: example[n] for n in names}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    wrapped = _LogitsOnly(model).eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapped, (), kwargs=kwargs, input_names=names, output_names=["logits"],
                dynamic_shapes={n: {0: batch, 1: sequence} for n in names}, dynamo=True, verbose=False,
                opset_version=opset,
            )
    except Exception as err:  # the exporter raises many types; the user needs the first line, DEBUG has the rest
        logger.debug("ONNX export failed", exc_info=True)
        raise UserError(f"ONNX export of {type(model).__name__} failed: {str(err).strip().splitlines()[0]}") from None
    # One file (weights inside): fine below ONNX's 2 GB protobuf limit, which BERT-sized students are far under.
    atomic_write(path, lambda tmp: program.save(tmp, external_data=False))
    logger.info("exported %s (%.1f MB)", path, os.path.getsize(path) / 1e6)
    return names


def int8_op_types() -> list[str]:
    """The operator types --int8 quantises: all that ONNX Runtime's dynamic quantiser handles but INT8_SKIPPED_OPS."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return sorted(op for op in IntegerOpsRegistry if op not in INT8_SKIPPED_OPS)


def quantize_int8(src: str, dst: str) -> None:
    """Dynamic int8 quantisation (weights int8 per tensor, activations quantised per batch at run time).

    ONNX Runtime's pre-processing (shape inference and graph clean-up) comes first, as its docs advise; its symbolic
    shape inference does not complete on torch.export graphs, so only ONNX's own shape inference runs.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=os.path.dirname(dst) or ".") as tmpdir:
        prepared = os.path.join(tmpdir, "prepared.onnx")
        with _quiet_exporter():
            quant_pre_process(src, prepared, skip_symbolic_shape=True)
            atomic_write(dst, lambda tmp: quantize_dynamic(prepared, tmp, weight_type=QuantType.QInt8,
                                                             op_types_to_quantize=int8_op_types()))
    logger.info("quantised %s (%.1f MB)", dst, os.path.getsize(dst) / 1e6)


def export_model(model: torch.nn.Module, tokenizer, label2id: dict[str, int], out: str, int8: bool) -> list[str]:
    """An export directory: model.onnx (+ model.int8.onnx), config.json, tokenizer files, labels.json.

    Returns the graph's input names. A model.int8.onnx left by an earlier export with --int8 is removed when
    this one has no --int8, so `predict --int8` never runs a model other than the one model.onnx came from.
    """
    fp32_path, int8_path = os.path.join(out, FP32_FILE), os.path.join(out, INT8_FILE)
    names = export_onnx(model, tokenizer, fp32_path)
    if int8:
        quantize_int8(fp32_path, int8_path)
    elif os.path.exists(int8_path):
        os.remove(int8_path)
        logger.info("removed %s: it came from an earlier export", int8_path)
    # config.json rides along: AutoTokenizer reads it, and it records the architecture and labels.
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_json(os.path.join(out, LABELS_FILE), label2id)
    return names


class OnnxClassifier:
    """An ONNX Runtime session that answers like a classifier: `model(**batch)["logits"]`.

    So soft_labels.predict_logits and evaluation.measure_speed run it exactly as they run a PyTorch model (same
    batches, same padding, same timing loop).
    """

    def __init__(self, path: str, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # The same thread count as PyTorch, so the two runtimes are compared on equal hardware.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: ORT's warnings go to stderr, not to logging
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise UserError(f"{path}: not a model ONNX Runtime can load ({str(err).strip().splitlines()[0]})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.threads = options.intra_op_num_threads

    def eval(self) -> "OnnxClassifier":
        return self

    def parameters(self):
        yield torch.empty(0)  # predict_logits asks for the device; ONNX Runtime runs on the CPU

    def __call__(self, **batch) -> dict[str, torch.Tensor]:
        feed = {n: np.ascontiguousarray(batch[n].numpy() if torch.is_tensor(batch[n]) else batch[n], dtype=np.int64)
                for n in self.input_names}
        return {"logits": torch.from_numpy(self.session.run(None, feed)[0])}


# ------------------------------------------------------------------------------------------------------ measurements


def check_parity(torch_logits: torch.Tensor, onnx_logits: torch.Tensor) -> dict:
    diff = float((torch_logits - onnx_logits).abs().max())
    return {"max_abs_diff": diff, "bound": PARITY_BOUND, "passed": diff <= PARITY_BOUND,
            "top1_agreement": metrics.agreement(onnx_logits, torch_logits)}


def int8_fidelity(fp32_logits: torch.Tensor, int8_logits: torch.Tensor, labels: torch.Tensor) -> dict:
    agreement = metrics.agreement(int8_logits, fp32_logits)
    fp32_acc, int8_acc = metrics.accuracy(fp32_logits, labels), metrics.accuracy(int8_logits, labels)
    return {
        "agreement_with_fp32": agreement,
        "agreement_target": INT8_AGREEMENT_TARGET,
        "agreement_met": agreement >= INT8_AGREEMENT_TARGET,
        "accuracy_fp32": fp32_acc,
        "accuracy_int8": int8_acc,
        "accuracy_change_points": 100 * (int8_acc - fp32_acc),
        "max_abs_logit_diff": float((fp32_logits - int8_logits).abs().max()),
        # Which rows flip: every one of them, and how many rows of the set are as close to a tie under fp32.
        "flips": metrics.disagreement_margins(fp32_logits, int8_logits),
    }


def time_models(candidates: dict[str, tuple], batches: int, rounds: int = 3) -> dict[str, dict]:
    """CPU latency (batch 1) and throughput (batch 64) of each model, in `rounds` round-robin passes.

    Each value is the median over rounds, so a burst of load from elsewhere lands on one round of every model
    rather than on all of one model's timings. Each round's latency and throughput are kept too
    (`*_rounds`), so a ratio between two models can be given per round and its spread shown.

    Args:
        candidates: name -> (model, rows, collate); every model gets the same texts, tokenised its own way.
    """
    runs: dict[str, list[dict]] = {name: [] for name in candidates}
    logger.info("timing %d models: %d round(s) of %d batches each", len(candidates), rounds, batches)
    for r in range(rounds):
        for name, (model, rows, collate) in candidates.items():
            runs[name].append(measure_speed(model, rows, collate, batches=batches))
            logger.info("speed round %d/%d: %s %.2f ms at batch 1", r + 1, rounds, name, runs[name][-1]["latency_ms_b1"])
    out = {}
    for name, results in runs.items():
        out[name] = {k: statistics.median(r[k] for r in results)
                     for k in ("latency_ms_b1", "latency_ms_b1_p95", "throughput_b64")}
        out[name]["rounds"] = rounds
        out[name]["latency_ms_b1_rounds"] = [r["latency_ms_b1"] for r in results]
        out[name]["throughput_b64_rounds"] = [r["throughput_b64"] for r in results]
    return out


def versions() -> dict[str, str]:
    out = {}
    for package in ("kdistill", "torch", "transformers", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def machine() -> str:
    from .evaluation import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}"


# ---------------------------------------------------------------------------------------------------------- export


def export_run(
    run_dir: str,
    out: str | None = None,
    int8: bool = False,
    teacher: bool = False,
    rows: int = 1000,
    data_file: str | None = None,
    speed_batches: int = 20,
    speed_rounds: int = 3,
    command: str | None = None,
) -> dict:
    """Export a run's student to ONNX, check it against PyTorch, time it, write the model card; returns the report.

    The report (also written to OUT/export_report.json) says whether the export passed: `report["passed"]` is False
    when the fp32 logits miss PyTorch's by more than PARITY_BOUND (the files are kept for inspection).

    Args:
        out: the export directory (default RUN_DIR/export).
        int8: also write model.int8.onnx (dynamic int8 quantisation) and check it against fp32.
        teacher: also export the teacher (to OUT/teacher) and time it in ONNX Runtime.
        rows: evaluation rows for the parity and int8 checks.
        data_file: a labelled file for the checks, instead of the run's test/validation file.
        speed_batches: timed batches per speed measurement (0 skips timing).
        speed_rounds: round-robin rounds of the speed measurement.
        command: the command line recorded in the report and the card (default: the equivalent `kdistill export`).
    """
    if rows < 1 or speed_batches < 0 or speed_rounds < 1:
        raise UserError("export: --rows and --speed_rounds must be at least 1, --speed_batches at least 0")
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"export needs {', '.join(missing)}: pip install onnx onnxruntime onnxscript")
    if command is None:
        flags = [f"--{name}" for name, on in (("int8", int8), ("teacher", teacher)) if on]
        command = shlex.join(["kdistill", "export", run_dir, "--format", "onnx", *flags, *(["--out", out] if out else []),
                              "--rows", str(rows), *(["--data", data_file] if data_file else []),
                              "--speed_batches", str(speed_batches), "--speed_rounds", str(speed_rounds)])

    run = load_run(run_dir)
    out = out or os.path.join(run_dir, "export")
    os.makedirs(out, exist_ok=True)
    need_teacher = teacher or speed_batches > 0
    tdir = teacher_dir(run) if need_teacher else None

    student = load_classifier(run.student_dir, "student").eval()
    tokenizer = load_tokenizer(run.student_dir, "student tokenizer")
    data = data_config(run, data_file)
    eval_set, labels, source = eval_rows(data, tokenizer, run.label2id, rows)
    collate = pad(tokenizer)

    fp32_path, int8_path = os.path.join(out, FP32_FILE), os.path.join(out, INT8_FILE)
    names = export_model(student, tokenizer, run.label2id, out, int8)

    report: dict = {
        "format": "onnx",
        "command": command,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "versions": versions(),
        "run_dir": run_dir,
        "out": out,
        "inputs": names,
        "output": "logits",
        "max_length": data.max_length,
        "labels": run.label2id,
        "eval": {"source": source, "rows": len(eval_set)},
        "parameters": {"student": count_parameters(student)},
        "sizes": {"student PyTorch": size_on_disk(run.student_dir), "student ONNX fp32": os.path.getsize(fp32_path)},
    }
    pt_logits = predict_logits(student, eval_set, collate)
    fp32 = OnnxClassifier(fp32_path)
    fp32_logits = predict_logits(fp32, eval_set, collate)
    report["parity"] = check_parity(pt_logits, fp32_logits)
    report["accuracy_pytorch"] = metrics.accuracy(pt_logits, labels)
    candidates: dict[str, tuple] = {"student PyTorch": (student, eval_set, collate),
                                    "student ONNX fp32": (fp32, eval_set, collate)}
    if int8:
        int8_model = OnnxClassifier(int8_path)
        report["int8"] = int8_fidelity(fp32_logits, predict_logits(int8_model, eval_set, collate), labels)
        report["sizes"]["student ONNX int8"] = os.path.getsize(int8_path)
        candidates["student ONNX int8"] = (int8_model, eval_set, collate)
    if tdir is not None:
        candidates = {**_teacher_side(report, tdir, run, data, rows, out, int8, export=teacher), **candidates}

    if speed_batches > 0:
        models = time_models(candidates, speed_batches, speed_rounds)
        report["speed"] = {"threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                           "batches": speed_batches, "rounds": speed_rounds, "batch_size": 64, "models": models}
    report["anchors"] = ANCHORS
    report["summary"] = summary(report)
    report["passed"] = report["parity"]["passed"] and report.get("teacher_parity", {}).get("passed", True)
    write_json(os.path.join(out, REPORT_FILE), report)
    write_text(os.path.join(out, CARD_FILE), model_card(report, run.config, run.evaluation))

    if "int8" in report and not report["int8"]["agreement_met"]:
        logger.warning("int8 agrees with fp32 on %s of rows, below the %s target; see %s",
                       pct(report["int8"]["agreement_with_fp32"]), pct(INT8_AGREEMENT_TARGET), CARD_FILE)
    if not report["passed"]:
        logger.error("PARITY FAILED: ONNX logits differ from PyTorch's by more than %g (see %s)", PARITY_BOUND, REPORT_FILE)
    return report


def _teacher_side(report: dict, tdir: str, run: Run, data: DataConfig, rows: int, out: str, int8: bool,
                  export: bool) -> dict[str, tuple]:
    """The teacher's entries of the report (and, with `export`, its ONNX files); returns its models to time."""
    teacher = load_classifier(tdir, "teacher", run.label2id).eval()
    teacher_tok = load_tokenizer(tdir, "teacher tokenizer")
    # The same texts, tokenised the teacher's way (its vocabulary may differ from the student's).
    teacher_rows, _, _ = eval_rows(data, teacher_tok, run.label2id, rows)
    tcollate = pad(teacher_tok)
    report["teacher_dir"] = tdir
    report["parameters"]["teacher"] = count_parameters(teacher)
    report["sizes"]["teacher PyTorch"] = size_on_disk(tdir)
    timed = {"teacher PyTorch": (teacher, teacher_rows, tcollate)}
    if export:
        tout = os.path.join(out, "teacher")
        t32, t8 = os.path.join(tout, FP32_FILE), os.path.join(tout, INT8_FILE)
        export_model(teacher, teacher_tok, run.label2id, tout, int8)
        teacher_fp32 = OnnxClassifier(t32)
        report["teacher_parity"] = check_parity(predict_logits(teacher, teacher_rows, tcollate),
                                                predict_logits(teacher_fp32, teacher_rows, tcollate))
        report["sizes"]["teacher ONNX fp32"] = os.path.getsize(t32)
        timed["teacher ONNX fp32"] = (teacher_fp32, teacher_rows, tcollate)
        if int8:
            report["sizes"]["teacher ONNX int8"] = os.path.getsize(t8)
            timed["teacher ONNX int8"] = (OnnxClassifier(t8), teacher_rows, tcollate)
    return timed


# ---------------------------------------------------------------------------------------------------------- predict


@dataclass
class Predictor:
    """A classifier ready for raw text: a PyTorch model or an ONNX session, its tokenizer and labels."""

    model: object
    tokenizer: object
    id2label: dict[int, str]
    max_length: int
    kind: str  # "onnx fp32", "onnx int8" or "pytorch"

    def probabilities(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        names = [n for n in self.tokenizer.model_input_names if n in enc]
        rows = [{n: enc[n][i] for n in names} for i in range(len(texts))]
        logits = predict_logits(self.model, rows, pad(self.tokenizer), batch_size=batch_size)
        return metrics.softmax(logits)

    def predict(self, texts: list[str], batch_size: int = 64) -> list[tuple[str, dict[str, float]]]:
        """Each text's label and its probability of every label, by label name."""
        out = []
        for p in self.probabilities(texts, batch_size):
            best = int(p.argmax())
            out.append((self.id2label.get(best, str(best)), {self.id2label.get(i, str(i)): float(v) for i, v in enumerate(p)}))
        return out


def _max_length(model_dir: str, tokenizer) -> int:
    """Truncation length: the export's, else the run's (in model_dir or its parent), else the tokenizer's (<= 512)."""
    # An export's teacher/ reads its parent's report.
    for report in (os.path.join(model_dir, REPORT_FILE), os.path.join(model_dir, os.pardir, REPORT_FILE)):
        if os.path.isfile(report):
            return int(_read_json(report).get("max_length", 512))
    for run_config in (os.path.join(model_dir, "run_config.json"), os.path.join(model_dir, os.pardir, "run_config.json")):
        if os.path.isfile(run_config):
            return int(_read_json(run_config).get("data", {}).get("max_length", 512))
    return min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)


def load_predictor(model_dir: str, int8: bool = False) -> Predictor:
    """An export directory (model.onnx, or model.int8.onnx with `int8`), a model directory, or a run directory."""
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir}: no such directory")
    onnx_file = os.path.join(model_dir, INT8_FILE if int8 else FP32_FILE)
    if os.path.isfile(onnx_file):
        tokenizer = load_tokenizer(model_dir, "tokenizer")
        label2id = _read_json(os.path.join(model_dir, LABELS_FILE)) if os.path.isfile(os.path.join(model_dir, LABELS_FILE)) else {}
        id2label = {int(v): str(k) for k, v in label2id.items()}
        return Predictor(OnnxClassifier(onnx_file), tokenizer, id2label, _max_length(model_dir, tokenizer),
                         "onnx int8" if int8 else "onnx fp32")
    if int8:
        raise UserError(f"{model_dir}: no {INT8_FILE} (export with --int8, or drop --int8)")
    for candidate in (model_dir, os.path.join(model_dir, "student")):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            model = load_classifier(candidate, "model").eval()
            tokenizer = load_tokenizer(candidate, "tokenizer")
            id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
            return Predictor(model, tokenizer, id2label, _max_length(candidate, tokenizer), "pytorch")
    raise UserError(f"{model_dir}: no model here (no {FP32_FILE}, config.json or student/config.json)")
