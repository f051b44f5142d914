"""ONNX: exporting a classifier (fp32, dynamic int8), running it with ONNX Runtime, and the checks on it.

The exporter is torch.export-based (`torch.onnx.export(..., dynamo=True)`). The TorchScript exporter
(dynamo=False) traces transformers 5's attention-mask construction wrongly: on the SST-2 MiniLM student its logits
were off by 0.39 (measured 2026-11-28, torch 2.13.0, transformers 5.24.0); the dynamo export matched to 1.4e-6.
The graph uses ONNX opset 23, where scaled-dot-product attention is one `Attention` node instead of about ten
(MatMul, Mul, Softmax, Where, ...): on the SST-2 2-layer student that takes the graph from 121 to 88 nodes, gives the
same predictions, and was 3-12% faster than opset 20 (fp32 and int8, batch 1 and 64) in one round-robin run on
2 cores (benchmarks/onnx_opset.py).
"""

import contextlib
import inspect
import logging
import os
import statistics
import tempfile
import warnings

import numpy as np
import torch

from .. import metrics
from ..deploy import CARD_FILE, FP32_FILE, INT8_FILE, REPORT_FILE  # noqa: F401 - export.run reads them from here
from ..errors import UserError
from ..evaluation import measure_speed
from ..files import LABELS_FILE, atomic_write, write_json
from ..report.model_card import INT8_AGREEMENT_TARGET, PARITY_BOUND
from ..tasks.sequence import SequenceClassification

logger = logging.getLogger(__package__)  # "kdistill.export", as before the split (benchmarks/export_speed.py reads it)

FORMATS = ("onnx",)
# The export signature is the task's (tasks/*.py `export_inputs`); sequence classification's, by default.
INPUT_NAMES = SequenceClassification.export_inputs
OPSET = 23  # the first opset with a standard Attention operator
# --int8 quantises every operator type ONNX Runtime's dynamic quantiser knows (MatMul, Gather, LSTM, ...) except
# "Attention": the quantiser takes the standard opset-23 Attention node for its own com.microsoft Attention and writes
# a QAttention that does not load. Attention has no weights of its own here (the projections are MatMuls), so the
# int8 graph is the same as before opset 23, and so are its logits (checked on the SST-2 student: same 8 flips).
INT8_SKIPPED_OPS = ("Attention",)


# ----------------------------------------------------------------------------------------------- ONNX: export and run


class _LogitsOnly(torch.nn.Module):
    """A classifier seen as a function of its input tensors that returns only the logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits


def input_names(model: torch.nn.Module, tokenizer, candidates: tuple[str, ...] = INPUT_NAMES) -> list[str]:
    """The inputs the exported graph takes: of the task's `candidates`, input_ids and attention_mask always, the
    others when the tokenizer makes them and the model accepts them."""
    accepted = inspect.signature(model.forward).parameters
    return [n for n in candidates
            if n in ("input_ids", "attention_mask") or (n in tokenizer.model_input_names and n in accepted)]


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


def export_onnx(model: torch.nn.Module, tokenizer, path: str, opset: int = OPSET,
                inputs: tuple[str, ...] = INPUT_NAMES) -> list[str]:
    """Write `model` to `path` as ONNX with dynamic batch and sequence axes; returns the graph's input names."""
    names = input_names(model, tokenizer, inputs)
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


def export_model(model: torch.nn.Module, tokenizer, label2id: dict[str, int], out: str, int8: bool,
                 inputs: tuple[str, ...] = INPUT_NAMES) -> list[str]:
    """An export directory: model.onnx (+ model.int8.onnx), config.json, tokenizer files, labels.json.

    `inputs` are the graph's candidate inputs, the task's export signature (`export_inputs`).

    Returns the graph's input names. A model.int8.onnx left by an earlier export with --int8 is removed when
    this one has no --int8, so `predict --int8` never runs a model other than the one model.onnx came from.
    """
    fp32_path, int8_path = os.path.join(out, FP32_FILE), os.path.join(out, INT8_FILE)
    names = export_onnx(model, tokenizer, fp32_path, inputs=inputs)
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

