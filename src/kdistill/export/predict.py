"""`kdistill predict`: a classifier or a tagger ready for raw text, from an export directory (ONNX), a model or a run
directory.

A tagger (a `...ForTokenClassification` model) reads a text the way its export does (deploy.runtime): words split at
whitespace, encoded as pre-split words, each word's tag the argmax at its first sub-token, IOB2 tags decoded into
entities with character spans (`deploy.runtime.tag_words`); tests/test_token_deploy.py checks the two paths agree."""

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .. import metrics
from ..files import LABELS_FILE
from ..errors import UserError
from ..soft_labels import predict_logits
from ..students import load_classifier, load_tokenizer
from .onnx import FP32_FILE, INT8_FILE, REPORT_FILE, OnnxClassifier
from ..rundir import RUN_CONFIG, RunPaths, read_json
from .run import pad


@dataclass
class Predictor:
    """A classifier or (`tagger`) a token tagger ready for raw text: a PyTorch model or an ONNX session, its
    tokenizer and labels. A tagger answers `tag` (entities), a classifier `probabilities` and `predict`."""

    model: object
    tokenizer: object
    id2label: dict[int, str]
    max_length: int
    kind: str  # "onnx fp32", "onnx int8" or "pytorch"
    tagger: bool = False  # a token-classification model: entities, not one label per text

    def probabilities(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if self.tagger:
            raise TypeError("a tagger predicts entities: use Predictor.tag or predict_stream")
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        names = [n for n in self.tokenizer.model_input_names if n in enc]
        rows = [{n: enc[n][i] for n in names} for i in range(len(texts))]
        logits = predict_logits(self.model, rows, pad(self.tokenizer), batch_size=batch_size)
        return metrics.softmax(logits)

    def tag(self, texts: list[str], batch_size: int = 64) -> list[dict]:
        """A tagger's prediction of each text: {"entities": [{"type", "text", "start", "end", "score"}], "tags": [a
        tag per word, None past max_length], "truncated_words": n}, as deploy.runtime.ExportedModel.predict gives."""
        import torch

        from ..deploy.runtime import split_words, tag_words

        labels = [self.id2label.get(i, str(i)) for i in range(len(self.id2label))]
        spans = [split_words(text) for text in texts]
        out: list[dict] = []
        for start in range(0, len(texts), batch_size):
            chunk = range(start, min(start + batch_size, len(texts)))
            said = [i for i in chunk if spans[i]]  # a text with no words has nothing to tag
            enc = self.tokenizer([[texts[i][a:b] for a, b in spans[i]] for i in said], is_split_into_words=True,
                                 truncation=True, max_length=self.max_length) if said else None
            logits = {}
            if said:
                names = [n for n in self.tokenizer.model_input_names if n in enc]
                batch = pad(self.tokenizer)([{n: enc[n][j] for n in names} for j in range(len(said))])
                with torch.no_grad():
                    full = self.model(**{n: batch[n] for n in names if n in batch}).logits.float().numpy()
                left = getattr(self.tokenizer, "padding_side", "right") == "left"
                for j, i in enumerate(said):
                    n = len(enc["input_ids"][j])
                    logits[i] = (full[j, full.shape[1] - n:] if left else full[j, :n], enc.word_ids(j))
            for i in chunk:
                if i in logits:
                    out.append(tag_words(texts[i], spans[i], logits[i][1], logits[i][0], labels))
                else:
                    out.append({"entities": [], "tags": [], "truncated_words": 0})
        return out

    def predict(self, texts: list[str], batch_size: int = 64) -> list[tuple[str, dict[str, float]]]:
        """Each text's label and its probability of every label, by label name."""
        if self.tagger:
            raise TypeError("a tagger predicts entities: use Predictor.tag or predict_stream")
        out = []
        for p in self.probabilities(texts, batch_size):
            best = int(p.argmax())
            out.append((self.id2label.get(best, str(best)), {self.id2label.get(i, str(i)): float(v) for i, v in enumerate(p)}))
        return out

    def predict_stream(self, texts: Iterable[str], batch_size: int = 64) -> Iterator[tuple[str, dict]]:
        """(text, {"label", "probabilities"}) for every text, `batch_size` at a time (bounded memory), as
        deploy.runtime.ExportedModel.predict_stream answers; for a tagger (text, `tag`'s prediction)."""
        texts = iter(texts)
        while batch := list(itertools.islice(texts, batch_size)):
            if self.tagger:
                yield from zip(batch, self.tag(batch, batch_size))
                continue
            for text, (label, probabilities) in zip(batch, self.predict(batch, batch_size)):
                yield text, {"label": label, "probabilities": probabilities}


def _max_length(model_dir: str, tokenizer) -> int:
    """Truncation length: the export's, else the run's (in model_dir or its parent), else the tokenizer's (<= 512)."""
    # An export's teacher/ reads its parent's report.
    for report in (os.path.join(model_dir, REPORT_FILE), os.path.join(model_dir, os.pardir, REPORT_FILE)):
        if os.path.isfile(report):
            return int(read_json(report).get("max_length", 512))
    for run_config in (os.path.join(model_dir, RUN_CONFIG), os.path.join(model_dir, os.pardir, RUN_CONFIG)):
        if os.path.isfile(run_config):
            return int(read_json(run_config).get("data", {}).get("max_length", 512))
    return min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)


def load_predictor(model_dir: str, int8: bool = False) -> Predictor:
    """An export directory (model.onnx, or model.int8.onnx with `int8`), a model directory, or a run directory."""
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir}: no such directory")
    onnx_file = os.path.join(model_dir, INT8_FILE if int8 else FP32_FILE)
    if os.path.isfile(onnx_file):
        report = os.path.join(model_dir, REPORT_FILE)
        task = read_json(report).get("task", "sequence_classification") if os.path.isfile(report) else None
        if task not in (None, "sequence_classification"):  # Predictor reads an export's one row of logits per text
            raise UserError(f"{model_dir}: an export of a {task} model; load it with "
                            "kdistill.deploy.ExportedModel.load (what `kdistill predict` does), or give the run "
                            "directory for predictions on PyTorch")
        tokenizer = load_tokenizer(model_dir, "tokenizer")
        label2id = read_json(os.path.join(model_dir, LABELS_FILE)) if os.path.isfile(os.path.join(model_dir, LABELS_FILE)) else {}
        id2label = {int(v): str(k) for k, v in label2id.items()}
        return Predictor(OnnxClassifier(onnx_file), tokenizer, id2label, _max_length(model_dir, tokenizer),
                         "onnx int8" if int8 else "onnx fp32")
    if int8:
        raise UserError(f"{model_dir}: no {INT8_FILE} (export with --int8, or drop --int8)")
    for candidate in (model_dir, RunPaths(model_dir).student):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            tagger = _is_tagger(candidate)
            model = load_classifier(candidate, "model", auto_model="AutoModelForTokenClassification" if tagger
                                    else "AutoModelForSequenceClassification").eval()
            tokenizer = load_tokenizer(candidate, "tokenizer")
            id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
            return Predictor(model, tokenizer, id2label, _max_length(candidate, tokenizer), "pytorch", tagger)
    raise UserError(f"{model_dir}: no model here (no {FP32_FILE}, config.json or student/config.json)")


def _is_tagger(model_dir: str) -> bool:
    """Whether the model in `model_dir` tags tokens (a `...ForTokenClassification` architecture)."""
    architectures = read_json(os.path.join(model_dir, "config.json")).get("architectures") or []
    return any(str(a).endswith("ForTokenClassification") for a in architectures)
