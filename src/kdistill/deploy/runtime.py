"""An export directory as a classifier of raw text, on ONNX Runtime, `tokenizers` and numpy (no torch).

The tokenizer is the export's tokenizer.json, which is what a transformers fast tokenizer runs underneath, set up
as `kdistill export` checked it: truncation at the run's max_length, padding to the longest text of a batch with the
tokenizer's pad token. tests/test_deploy.py checks the logits against the PyTorch student's within 1e-4.

Token classification (a tagger's export, `"task": "token_classification"` in export_report.json): a text is split
into words at whitespace (`str.split`'s rule; the report's `"words": "whitespace"`), as CoNLL-style training data
has one word per token with punctuation apart ("lamb ." rather than "lamb."). The words are encoded as
pre-tokenised input (`is_pretokenized=True`, what transformers' `is_split_into_words=True` does), each word's tag is
the argmax at its first sub-token, and the IOB2 tags become entities with character offsets into the text
(`decode_entities`). Words past max_length get no tag and are counted (`truncated_words`).
tests/test_token_deploy.py checks this against the PyTorch student decoded the same way.
"""

import codecs
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..files import LABELS_FILE, decode_error
from . import FP32_FILE, INT8_FILE, REPORT_FILE, TOKENIZER_CONFIG, TOKENIZER_FILE

# predict_stream sorts this many batches of texts by length at a time (memory stays bounded for any file).
STREAM_WINDOW = 16
# A batch stops growing when padding would make it cost more than this many times its texts' own tokens.
PADDING_SLACK = 1.25
# The tasks whose exports this runtime can run: a label per text, or tagged words and their entities.
TASKS = ("sequence_classification", "token_classification")
TOKEN_TASKS = ("token_classification",)
_WORD = re.compile(r"\S+")


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

    Build it with `ExportedModel.load(export_dir)`. `predict(texts)` gives each text's label and probabilities
    (for a tagger: its entities, tags and truncated words); `logits(texts)` the raw [texts, labels] array (for a
    tagger: a [sub-tokens, labels] array per text).
    """

    directory: str
    session: object
    tokenizer: object
    labels: list[str]
    max_length: int
    pad_id: int
    pad_left: bool
    int8: bool
    report: dict = field(default_factory=dict)
    task: str = "sequence_classification"

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
        # An export's teacher/ (export --teacher) has no report of its own: its parent's describes it too.
        reports = [os.path.join(d, REPORT_FILE) for d in (directory, os.path.join(directory, os.pardir))]
        report = next((_read_json(r) for r in reports if os.path.isfile(r)), {})
        task = report.get("task", "sequence_classification")
        if task not in TASKS:
            raise UserError(f"{directory}: an export of a {task} model; this runtime predicts {', '.join(TASKS)}")
        labels = _labels(directory, report)
        tokenizer, max_length, pad_id, pad_left = _tokenizer(directory, report)
        session = _session(model_file, threads)
        outputs = session.get_outputs()[0].shape[-1] if session.get_outputs() else None
        if isinstance(outputs, int) and outputs != len(labels):
            raise UserError(f"{directory}: {os.path.basename(model_file)} gives {outputs} scores per text but "
                            f"{LABELS_FILE} names {len(labels)} labels; re-export the run with kdistill export")
        return cls(directory, session, tokenizer, labels, max_length, pad_id, pad_left, int8, report, task)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The model's inputs for `texts` as one batch, unsorted: int64 arrays [texts, longest], padded on the side
        the tokenizer pads (what `batches` makes, without the sorting and cutting)."""
        return self._feed(self._encode(texts)[0])

    def _feed(self, encodings: list) -> dict[str, np.ndarray]:
        width = max(len(e.ids) for e in encodings)
        arrays = {name: np.full((len(encodings), width), value, dtype=np.int64)
                  for name, value in (("input_ids", self.pad_id), ("attention_mask", 0), ("token_type_ids", 0))}
        for row, e in enumerate(encodings):
            cols = slice(width - len(e.ids), width) if self.pad_left else slice(0, len(e.ids))
            arrays["input_ids"][row, cols] = e.ids
            arrays["attention_mask"][row, cols] = 1
            arrays["token_type_ids"][row, cols] = e.type_ids
        return {name: arrays[name] for name in self.input_names}

    def batches(self, texts: list[str], batch_size: int = 64) -> list[tuple[list[int], dict[str, np.ndarray]]]:
        """The model calls `logits(texts)` makes: (the texts' indices, their inputs) for each.

        Texts are sorted by length and cut into batches of similar length (see `length_batches`), so a batch is not
        padded to one long text: on the SST-2 student, 16 sorted texts a call ran 2.4x the texts per second of 16
        in arrival order, while batches themselves gained little over one text a call (compute grows with tokens).
        """
        return self._batches(self._encode(texts)[0], batch_size)

    def _encode(self, texts: list[str]) -> tuple[list, list[list[tuple[int, int]]] | None]:
        """The tokenizer's encodings of `texts` and, for a tagger, each text's words as (start, end) offsets."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not is_unicode(text):
                raise UserError(f"text {i + 1} is not valid Unicode text: {text!r:.60}")
        if self.task not in TOKEN_TASKS:
            return self.tokenizer.encode_batch(texts), None
        spans = [split_words(text) for text in texts]
        words = [[text[a:b] for a, b in row] for text, row in zip(texts, spans)]
        return self.tokenizer.encode_batch(words, is_pretokenized=True), spans

    def _batches(self, encodings: list, batch_size: int) -> list[tuple[list[int], dict[str, np.ndarray]]]:
        return [(chunk, self._feed([encodings[i] for i in chunk]))
                for chunk in length_batches([len(e.ids) for e in encodings], batch_size)]

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]

    def _rows(self, encodings: list, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(text index, its output) for every text, batch by batch; a per-token output is cut to the text's own
        sub-tokens (the padding, on whichever side, left out)."""
        for chunk, feed in self._batches(encodings, batch_size):
            out = self.run(feed)
            if (out.ndim == 3) != (self.task in TOKEN_TASKS):
                raise UserError(f"{self.directory}: the model gives {out.ndim - 1}-D logits per text, which does not "
                                f"fit the task its export report names ({self.task}); re-export the run")
            for j, i in enumerate(chunk):
                if out.ndim == 2:
                    yield i, out[j]
                else:
                    n = len(encodings[i].ids)
                    yield i, out[j, out.shape[1] - n:] if self.pad_left else out[j, :n]

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray | list[np.ndarray]:
        """[texts, labels] logits in the order of `texts`; for a tagger, a [sub-tokens, labels] array per text."""
        encodings, _ = self._encode(texts)
        if self.task in TOKEN_TASKS:
            rows: list = [None] * len(texts)
            for i, row in self._rows(encodings, batch_size):
                rows[i] = row
            return rows
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for i, row in self._rows(encodings, batch_size):
            out[i] = row
        return out

    def predict(self, texts: list[str], batch_size: int = 64) -> list[dict]:
        """Each text's {"label": name, "probabilities": {name: p}}; for a tagger, each text's
        {"entities": [{"type", "text", "start", "end", "score"}], "tags": [a tag per word, None for a word past
        max_length], "truncated_words": n} (see `tag_words`)."""
        if self.task in TOKEN_TASKS:
            encodings, spans = self._encode(texts)
            out: list = [None] * len(texts)
            for i, row in self._rows(encodings, batch_size):
                out[i] = tag_words(texts[i], spans[i], encodings[i].word_ids, row, self.labels)
            return out
        out = []
        for p in softmax(self.logits(texts, batch_size)):
            out.append({"label": self.labels[int(p.argmax())],
                        "probabilities": {name: float(v) for name, v in zip(self.labels, p)}})
        return out

    def predict_stream(self, texts: Iterable[str], batch_size: int = 64) -> Iterator[tuple[str, dict]]:
        """(text, prediction) for every text, in order, read STREAM_WINDOW batches at a time: a file of any length
        takes bounded memory, and each window is sorted by length before it is batched."""
        texts = iter(texts)
        while window := list(itertools.islice(texts, batch_size * STREAM_WINDOW)):
            yield from zip(window, self.predict(window, batch_size))

    def facts(self) -> dict:
        """What `GET /model` answers: the model, where it came from, and what its export measured."""
        report = self.report
        return {
            "directory": os.path.abspath(self.directory),
            "model_file": INT8_FILE if self.int8 else FP32_FILE,
            "task": self.task,
            "labels": self.labels,
            "max_length": self.max_length,
            "inputs": self.input_names,
            **{k: report[k] for k in ("model", "parameters", "sizes", "date", "machine", "versions") if k in report},
            "fp32_parity_passed": report.get("parity", {}).get("passed"),
            "int8_agreement_with_fp32": report.get("int8", {}).get("agreement_with_fp32"),
        }


def split_words(text: str) -> list[tuple[int, int]]:
    """A text's words as (start, end) character offsets: its runs of non-whitespace (`str.split`'s words)."""
    return [m.span() for m in _WORD.finditer(text)]


def decode_entities(tags: list[str | None]) -> list[tuple[str, int, int]]:
    """IOB2 tags (one per word) as entities: (type, first word, last word + 1).

    `B-X` starts an entity of type X and `I-X` continues one of type X. An `I-X` that follows `O`, nothing, or an
    entity of another type starts a new entity, as conlleval and the transformers NER pipeline read it (seqeval's
    strict IOB2 mode, which `kdistill eval` scores with, would not count it: a model's stray `I-X` is still shown to
    the user rather than dropped). `O`, a tag without a `B-`/`I-` prefix, and None (a word the model did not see)
    end an entity. A pure function: tests/test_token_deploy.py checks it.
    """
    out: list[tuple[str, int, int]] = []
    current: list | None = None  # [type, first, end]
    for i, tag in enumerate(tags):
        prefix, _, kind = (tag or "").partition("-")
        if prefix == "I" and kind and current is not None and current[0] == kind:
            current[2] = i + 1
            continue
        if current is not None:
            out.append(tuple(current))
            current = None
        if prefix in ("B", "I") and kind:
            current = [kind, i, i + 1]
    if current is not None:
        out.append(tuple(current))
    return out


def tag_words(text: str, spans: list[tuple[int, int]], word_ids: list[int | None], logits: np.ndarray,
              labels: list[str]) -> dict:
    """One text's prediction from a tagger's logits at its sub-tokens.

    Each word's tag is the argmax at its first sub-token; an entity's score is the mean, over its words, of the
    probability of the tag each was given. A word with no sub-token (cut at max_length) gets the tag None; the words
    after the last one the model saw are counted as `truncated_words`.

    Args:
        spans: the words' (start, end) offsets in `text` (`split_words`).
        word_ids: the word of each sub-token (None for special tokens), as the tokenizer's encoding gives them.
        logits: [sub-tokens, labels], the model's output for this text without padding.
    """
    first: dict[int, int] = {}
    for position, word in enumerate(word_ids[: len(logits)]):
        if word is not None and word not in first:
            first[word] = position
    probabilities = softmax(logits[list(first.values())]) if first else np.zeros((0, len(labels)))
    best = probabilities.argmax(axis=-1)
    tags: list[str | None] = [None] * len(spans)
    scores = [0.0] * len(spans)
    for word, b, p in zip(first, best, probabilities):
        tags[word], scores[word] = labels[int(b)], float(p[b])
    entities = []
    for kind, a, b in decode_entities(tags):
        start, end = spans[a][0], spans[b - 1][1]
        entities.append({"type": kind, "text": text[start:end], "start": start, "end": end,
                         "score": sum(scores[a:b]) / (b - a)})
    seen = max(first) + 1 if first else 0
    return {"entities": entities, "tags": tags, "truncated_words": len(spans) - seen}


def format_prediction(prediction: dict) -> str:
    """A prediction as `kdistill predict` prints it before the text: the label and its probabilities, or for a
    tagger each entity as `text [TYPE start:end]` (and how many words were cut at max_length)."""
    if "entities" not in prediction:
        shown = " ".join(f"p({k})={v:.4f}" for k, v in prediction["probabilities"].items())
        return f"{prediction['label']}\t{shown}"
    shown = "  ".join(f"{e['text']} [{e['type']} {e['start']}:{e['end']}]" for e in prediction["entities"])
    cut = prediction.get("truncated_words")
    return (shown or "(no entities)") + (f"  ({cut} word{'s' * (cut != 1)} past max_length, untagged)" if cut else "")


def is_unicode(text: str) -> bool:
    """Whether `text` can be encoded (tokenizers refuses a lone surrogate, which JSON's \\ud800 or a command line
    of bytes that are not UTF-8 can put in a str)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def length_batches(lengths: list[int], batch_size: int, slack: float = PADDING_SLACK) -> list[list[int]]:
    """Indices of texts grouped for model calls: sorted by length (shortest first), cut into batches of at most
    `batch_size` texts whose padded size (count x longest) stays within `slack` times their tokens, or of one text.

    A pure function of the lengths: tests/test_deploy.py checks it.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    out: list[list[int]] = []
    tokens = 0
    for i in order:
        if out and len(out[-1]) < batch_size and lengths[i] * (len(out[-1]) + 1) <= slack * (tokens + lengths[i]):
            out[-1].append(i)
            tokens += lengths[i]
        else:
            out.append([i])
            tokens = lengths[i]
    return out


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
    where = path if os.path.isfile(path) else f"{directory}/{REPORT_FILE}'s labels"
    ids = list(label2id.values())
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or sorted(ids) != list(range(len(ids))):
        # Each name one id, the ids 0..n-1: a repeated id or a stray one would mislabel or crash every prediction.
        raise UserError(f"{where}: label ids must be 0..{len(ids) - 1}, each once, found {json.dumps(ids)}")
    names = {i: str(name) for name, i in label2id.items()}
    return [names[i] for i in range(len(names))]


def _tokenizer(directory: str, report: dict):
    """The export's tokenizer.json, truncating at the run's max_length; its pad token's id; whether it pads on the
    left (as tokenizer_config.json's padding_side says; transformers pads on the right by default)."""
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
        pad_id = 0  # what transformers pads with when a tokenizer has no pad token
    tokenizer.no_padding()  # ExportedModel pads each batch itself, to its own longest text
    return tokenizer, max_length, pad_id, config.get("padding_side", "right") == "left"


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
