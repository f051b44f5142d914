"""An export directory as a classifier of raw text, on ONNX Runtime, `tokenizers` and numpy (no torch).

The tokenizer is the export's tokenizer.json, which is what a transformers fast tokenizer runs underneath, set up
as `kdistill export` checked it: truncation at the run's max_length, padding to the longest text of a batch with the
tokenizer's pad token. tests/test_deploy.py checks the logits against the PyTorch student's within 1e-4.
"""

import codecs
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..files import LABELS_FILE, decode_error
from . import FP32_FILE, INT8_FILE, REPORT_FILE, TOKENIZER_CONFIG, TOKENIZER_FILE

# The tasks whose exports this runtime can run, and what their logits are per text.
TASKS = ("sequence_classification",)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read it as JSON ({err})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object")
    return value


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 (as kdistill.metrics.softmax, which needs torch to import)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(axis=-1, keepdims=True)


@dataclass
class ExportedModel:
    """A `kdistill export` directory loaded for prediction: an ONNX Runtime session and the export's tokenizer.

    Build it with `ExportedModel.load(export_dir)`. `predict(texts)` gives each text's label and probabilities;
    `logits(texts)` the raw [texts, labels] array.
    """

    directory: str
    session: object
    tokenizer: object
    labels: list[str]
    max_length: int
    int8: bool
    report: dict = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str, int8: bool = False, threads: int | None = None) -> "ExportedModel":
        """Args:
            directory: an export directory (`kdistill export RUN_DIR`, by default RUN_DIR/export).
            int8: run model.int8.onnx (export with --int8) instead of model.onnx.
            threads: ONNX Runtime's intra-op threads (default: every core).
        """
        if not os.path.isdir(directory):
            raise UserError(f"{directory}: no such directory")
        model_file = os.path.join(directory, INT8_FILE if int8 else FP32_FILE)
        if not os.path.isfile(model_file):
            hint = "export with --int8, or drop --int8" if int8 else "make one with kdistill export RUN_DIR --format onnx"
            raise UserError(f"{directory}: no {os.path.basename(model_file)} ({hint})")
        report_file = os.path.join(directory, REPORT_FILE)
        report = _read_json(report_file) if os.path.isfile(report_file) else {}
        task = report.get("task", "sequence_classification")
        if task not in TASKS:
            raise UserError(f"{directory}: an export of a {task} model; this runtime predicts {', '.join(TASKS)}")
        labels = _labels(directory, report)
        tokenizer, max_length = _tokenizer(directory, report)
        return cls(directory, _session(model_file, threads), tokenizer, labels, max_length, int8, report)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The model's inputs for `texts`: int64 arrays [texts, longest], padded on the right."""
        encodings = self.tokenizer.encode_batch(texts)
        arrays = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                  "token_type_ids": [e.type_ids for e in encodings]}
        return {name: np.asarray(arrays[name], dtype=np.int64) for name in self.input_names}

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]

    def logits(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.run(self.encode(texts))

    def predict(self, texts: list[str]) -> list[dict]:
        """Each text's {"label": name, "probabilities": {name: p}}."""
        out = []
        for p in softmax(self.logits(texts)):
            out.append({"label": self.labels[int(p.argmax())],
                        "probabilities": {name: float(v) for name, v in zip(self.labels, p)}})
        return out

    def predict_stream(self, texts: Iterable[str], batch_size: int = 64) -> Iterator[tuple[str, dict]]:
        """(text, prediction) for every text, `batch_size` at a time, so a file of any length takes bounded memory."""
        texts = iter(texts)
        while batch := list(itertools.islice(texts, batch_size)):
            yield from zip(batch, self.predict(batch))

    def facts(self) -> dict:
        """What `GET /model` answers: the model, where it came from, and what its export measured."""
        report = self.report
        return {
            "directory": os.path.abspath(self.directory),
            "model_file": INT8_FILE if self.int8 else FP32_FILE,
            "task": report.get("task", "sequence_classification"),
            "labels": self.labels,
            "max_length": self.max_length,
            "inputs": self.input_names,
            **{k: report[k] for k in ("model", "parameters", "sizes", "date", "machine", "versions") if k in report},
            "fp32_parity_passed": report.get("parity", {}).get("passed"),
            "int8_agreement_with_fp32": report.get("int8", {}).get("agreement_with_fp32"),
        }


def _session(path: str, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's warnings would stand above a one-line error
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types for a bad file
        raise UserError(f"{path}: not a model ONNX Runtime can load ({str(err).strip().splitlines()[0]})") from None


def _labels(directory: str, report: dict) -> list[str]:
    """Label names by id, from labels.json (name -> id), else the report's copy of it."""
    path = os.path.join(directory, LABELS_FILE)
    label2id = _read_json(path) if os.path.isfile(path) else report.get("labels")
    if not label2id:
        raise UserError(f"{directory}: no {LABELS_FILE} (re-export the run with kdistill export)")
    names = {int(i): str(name) for name, i in label2id.items()}
    if sorted(names) != list(range(len(names))):
        raise UserError(f"{path}: label ids must be 0..{len(names) - 1}, found {sorted(names)}")
    return [names[i] for i in range(len(names))]


def _tokenizer(directory: str, report: dict):
    """The export's tokenizer.json, truncating at the run's max_length and padding to a batch's longest text."""
    from tokenizers import Tokenizer

    path = os.path.join(directory, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{directory}: no {TOKENIZER_FILE} (a fast tokenizer's file; re-export with kdistill export)")
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as err:  # tokenizers raises a bare Exception for a bad file
        raise UserError(f"{path}: not a tokenizers file ({err})") from None
    config_path = os.path.join(directory, TOKENIZER_CONFIG)
    config = _read_json(config_path) if os.path.isfile(config_path) else {}
    max_length = int(report.get("max_length") or min(int(config.get("model_max_length") or 512), 512))
    tokenizer.enable_truncation(max_length)
    pad_token = config.get("pad_token")
    pad_token = pad_token.get("content") if isinstance(pad_token, dict) else pad_token
    pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
    if pad_id is None:
        pad_token, pad_id = "[PAD]", 0  # what transformers pads with when a tokenizer has no pad token
    tokenizer.enable_padding(direction=config.get("padding_side", "right"), pad_id=pad_id, pad_token=pad_token,
                             pad_type_id=int(config.get("pad_token_type_id", 0)))
    return tokenizer, max_length


def read_texts(path: str, encoding: str = "utf-8") -> Iterator[str]:
    """The non-blank lines of a text file, without their line ends, read lazily (a file of any size).

    A file that does not decode is a UserError naming its first bad line and byte, and --encoding.
    """
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UserError(f"predict: unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    try:
        with open(path, encoding=encoding) as fh:
            for line in fh:
                if line.strip():
                    yield line.rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise decode_error(path, encoding, err, "give its encoding with --encoding (e.g. --encoding latin-1)") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
