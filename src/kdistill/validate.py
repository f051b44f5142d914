"""Checking a run's config before anything heavy loads, so a mistake is one line naming the field, not a traceback
(or a wrong result) after the teacher's fine-tuning or its soft-label pass.

Two layers, both run before any model or data set loads:

- `check_fields`: every number a user sets (BOUNDS) and every field with a list of choices, when its section of
  the config is built (config.py calls it from each section's __post_init__: YAML, flags and Python alike).
- `check_run`: what needs the files the config names: each data file's columns (there, and one value per row), a
  tagging task's evaluation tags against the training data's, the student's teacher layers against the teacher's
  layer count, a fine-tuned teacher's head against the task, and max_length against the models' position
  embeddings, read from their config.json and tokenizer_config.json without loading weights. The pipeline's steps
  (teach, distill, evaluate) call it first.

This module imports only `errors` at the top: config.py imports it.
"""

import dataclasses
import json
import math
import os
from typing import Any

from .errors import ConfigError, UserError

# The numbers a user may set, and their bounds: (low, low allowed, high or None, high allowed); None (unset) passes.
# A field not listed takes any value its type allows.
_AT_LEAST_0, _AT_LEAST_1, _ABOVE_0 = (0, True, None, False), (1, True, None, False), (0, False, None, False)
_FRACTION, _PROBABILITY = (0, True, 1, False), (0, True, 1, True)
BOUNDS: dict[str, tuple] = {
    "max_length": (8, True, None, False), "max_train_samples": _AT_LEAST_1, "max_eval_samples": _AT_LEAST_1,
    "max_transfer_samples": _AT_LEAST_1, "train_sample_seed": _AT_LEAST_0,
    "teacher_epochs": _ABOVE_0, "teacher_learning_rate": _ABOVE_0, "teacher_batch_size": _AT_LEAST_1,
    "teacher_seed": _AT_LEAST_0, "block_size": (2, True, None, False),
    "train_fraction": (0, False, 1, False), "soft_label_top_k": _AT_LEAST_0,
    "jsd_beta": (0, False, 1, False), "skew_alpha": _FRACTION,
    # bilstm_vocab_size: 3 special tokens ([PAD], [UNK], [MASK]) and at least one word.
    "student_num_layers": _AT_LEAST_1, "bilstm_vocab_size": (4, True, None, False), "bilstm_embedding_dim": _AT_LEAST_1,
    "bilstm_hidden_size": _AT_LEAST_1, "bilstm_classifier_size": _AT_LEAST_1, "bilstm_dropout": _FRACTION,
    "bilstm_seed": _AT_LEAST_0,
    "temperature": _ABOVE_0, "alpha": _PROBABILITY, "speed_batches": _AT_LEAST_0,
    # TrainingArguments' numbers, which the Trainer takes as they come (a batch size of 0 fails deep in a sampler;
    # num_train_epochs is checked with max_steps, in DistillationConfig). A learning rate of 0 trains nothing on
    # purpose (a test of what a step leaves alone); a negative one climbs the loss.
    "learning_rate": _AT_LEAST_0, "per_device_train_batch_size": _AT_LEAST_1, "per_device_eval_batch_size": _AT_LEAST_1,
    "gradient_accumulation_steps": _AT_LEAST_1, "eval_accumulation_steps": _AT_LEAST_1, "weight_decay": _AT_LEAST_0,
    "adam_beta1": _FRACTION, "adam_beta2": _FRACTION, "adam_epsilon": _AT_LEAST_0, "max_grad_norm": _AT_LEAST_0,
    "warmup_steps": _AT_LEAST_0, "label_smoothing_factor": _FRACTION, "logging_steps": _ABOVE_0,
    "save_steps": _ABOVE_0, "eval_steps": _ABOVE_0, "save_total_limit": _AT_LEAST_0, "seed": _AT_LEAST_0,
    "data_seed": _AT_LEAST_0, "dataloader_num_workers": _AT_LEAST_0, "eval_delay": _AT_LEAST_0,
}


def _bound_text(low, low_in: bool, high, high_in: bool) -> str:
    if high is None:
        return f"at least {low}" if low_in else f"> {low}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def _is_int_field(f: dataclasses.Field) -> bool:
    kinds = (f.type, *getattr(f.type, "__args__", ()))
    return int in kinds and float not in kinds


def check_fields(section: str, obj: Any) -> None:
    """Each of the dataclass `obj`'s fields listed in BOUNDS is a number within its bounds (an integer for an int
    field), and each whose metadata lists `choices` is one of them (argparse checks a flag's, not a YAML value's); a
    ConfigError naming the section and field otherwise."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        choices = f.metadata.get("choices")
        if choices is not None and value is not None and value not in choices:
            raise ConfigError(f"{section}: {f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        _check_number(section, f.name, value, _is_int_field(f))


def check_values(section: str, values: dict[str, Any]) -> None:
    """check_fields for a section's raw {field: value} dict (a YAML section before its dataclass is built): the
    bounds of the fields BOUNDS lists."""
    for name, value in values.items():
        _check_number(section, name, value, is_int=False)


def _check_number(section: str, name: str, value: Any, is_int: bool) -> None:
    # No number a user sets means anything as inf or NaN: `--learning_rate inf` trained every weight to NaN and
    # exited 0, `--num_train_epochs inf` failed in the Trainer after the soft-label pass. Refused in every field.
    infinite = isinstance(value, float) and not math.isfinite(value)
    if name not in BOUNDS or value is None:
        if infinite:
            raise ConfigError(f"{section}: {name} must be a finite number, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{section}: {name} must be a number, got {value!r}")
    if is_int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{section}: {name} must be a whole number, got {value!r}")
    low, low_in, high, high_in = BOUNDS[name]
    above = value > low or (low_in and value == low)  # False for NaN
    below = high is None or value < high or (high_in and value == high)
    if not (above and below):
        raise ConfigError(f"{section}: {name} must be {_bound_text(*BOUNDS[name])}, got {value!r}")
    if infinite:
        raise ConfigError(f"{section}: {name} must be a finite number, got {value!r}")


# ------------------------------------------------------------------------------------------- what needs the files


def check_run(config) -> None:
    """Check what a run's config says of its files before any model or data set loads (see the module docstring):
    a UserError naming the file and the field otherwise. Models that are not local directories (hub names) are
    left to their loader."""
    _check_data_files(config)
    _check_tags(config)
    _check_models(config)
    _check_feature_terms(config)


def _check_feature_terms(config) -> None:
    """Feature terms (hidden_mse, pkd, attention_kl, ...) read one teacher's and a transformers student's inside:
    refused here, before any teacher pass, for a BiLSTM student or several teachers."""
    from .losses import FEATURE_TERMS

    terms = [name for name in config.distill.objective_weights() if name in FEATURE_TERMS]
    if not terms:
        return
    if config.student.student_init == "bilstm":
        raise ConfigError(f"distill: objective terms {', '.join(terms)} compare hidden states layer by layer, which a "
                          "BiLSTM student does not have; use them with a transformers student, or drop them")
    if config.teacher.teachers is not None and len(json.loads(config.teacher.teachers)) > 1:
        raise ConfigError(f"distill: objective terms {', '.join(terms)} read one teacher's hidden states; with several "
                          "teachers use the logit terms (soft_kl, logit_mse) only")


def _check_data_files(config) -> None:
    from .data import check_file, split_file
    from .soft_labels.produce import SPLITS

    seen = set()
    for split in SPLITS:
        path = split_file(config.data, split)
        labelled = split != "transfer"
        if path is not None and (path, labelled) not in seen:
            seen.add((path, labelled))
            check_file(path, config.data, labelled)


def _check_tags(config) -> None:
    """A task of tagged words: every tag of the validation and test rows the run reads is one of the training rows'
    (the model's labels are the training data's), said before the teacher trains rather than when the split is
    prepared after it. The tables are the ones check_file read (CoNLL files are read whole; they are small)."""
    from .data import load_split, load_table, split_file, word_rows
    from .tasks import get_task

    data = config.data
    if not word_rows(data) or data.train_file is None:
        return
    task = get_task(data.task)
    train = load_split(data, "train")
    known = set(task.label_values(train, data))
    seen = set()
    for split in ("validation", "test"):
        path = split_file(data, split)
        if path is None or path in seen:
            continue
        seen.add(path)
        unknown = sorted(set(task.label_values(load_split(data, split), data)) - known)
        if unknown:
            total = len(load_table(data.train_file, data))
            where = data.train_file if len(train) == total else \
                f"{len(train)} of the {total} sentences in {data.train_file}, as max_train_samples keeps"
            raise UserError(f"{path}: tag(s) {', '.join(map(repr, unknown[:5]))} do not occur in the training data "
                            f"({where}), so the model has no such label; fix the tags, or train on data that has "
                            "them")


# The heads of the transformers Auto classes tasks load with (a task's `auto_model` is "AutoModel" + one of them),
# and what a model with that head was fine-tuned for.
_HEADS = {"ForSequenceClassification": "sequence classification", "ForTokenClassification": "token classification"}


def _check_head(config, name: str, model_config) -> None:
    """A teacher used as it is (teacher_train: false) has the task's kind of head: a sequence classifier would
    otherwise get a new, random token-classification head (or the reverse) and teach noise."""
    from .tasks import get_task

    auto_model = get_task(config.data.task).auto_model or ""
    wanted = auto_model.removeprefix("AutoModel")
    architectures = getattr(model_config, "architectures", None) or []
    if wanted not in _HEADS or any(a.endswith(wanted) for a in architectures):
        return
    other = next((a for a in architectures for head in _HEADS if head != wanted and a.endswith(head)), None)
    if other is None:
        return  # a bare backbone or another kind of model: its loader says what it makes of it
    kind = next(_HEADS[h] for h in _HEADS if other.endswith(h))
    raise ConfigError(f"teacher: {name} is a {other} (fine-tuned for {kind}) but the task {config.data.task} "
                      f"needs a teacher fine-tuned for {_HEADS[wanted]} (a ...{wanted}); give one, or set "
                      "teacher_train: true to fine-tune this one with a new head")


# Models whose position ids start after the padding index (RoBERTa's create_position_ids_from_input_ids): of
# max_position_embeddings, pad_token_id + 1 are never a text's.
_POSITIONS_AFTER_PADDING = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text",
                            "ibert", "mpnet", "roberta-prelayernorm"}
# tokenizer_config.json's model_max_length at or above this means "no limit" (transformers writes int(1e30)).
_NO_LIMIT = int(1e20)


def _local(name: str | None) -> str | None:
    """The directory a model name points at, if it is a local one ('pkg:MODULE' resolved)."""
    if not name:
        return None
    from .students import resolve_model_path

    try:
        path = resolve_model_path(name)
    except UserError:  # a 'pkg:' package that is not installed: its loader says so when (if) the model is needed
        return None
    return path if os.path.isdir(path) else None


def _model_config(name: str | None, trust_remote_code: bool):
    """A local model's config (config.json only, no weights), or None when that is not to be had here."""
    path = _local(name)
    if path is None or not os.path.isfile(os.path.join(path, "config.json")):
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - a config its loader will refuse, in one line of its own, when the model loads
        return None


def _tokenizer_limit(name: str | None) -> tuple[bool, int | None]:
    """(whether it is known, the tokenizer's model_max_length or None for none) for a local tokenizer."""
    path = _local(name)
    if path is None:
        return False, None
    try:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as fh:
            limit = json.load(fh).get("model_max_length")
    except FileNotFoundError:
        return os.path.isfile(os.path.join(path, "tokenizer.json")), None
    except (OSError, ValueError, AttributeError):
        return False, None
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit >= _NO_LIMIT:
        return True, None
    return True, int(limit)


def _positions(model_config) -> int | None:
    """How many tokens a model's position embeddings hold; None where its positions do not bound a text (relative
    or rotary positions) or it does not say."""
    if getattr(model_config, "position_biased_input", True) is False:  # DeBERTa-v2/v3: relative positions only
        return None
    if any(getattr(model_config, a, None) for a in ("rope_theta", "rope_scaling", "rope_parameters")):
        return None
    positions = getattr(model_config, "max_position_embeddings", None)
    if isinstance(positions, bool) or not isinstance(positions, int):
        return None
    if getattr(model_config, "model_type", None) in _POSITIONS_AFTER_PADDING:
        positions -= (getattr(model_config, "pad_token_id", None) or 0) + 1
    return positions


def _check_length(config, what: str, name: str, model_config, tokenizer: str) -> None:
    """Texts cut to max_length (or the tokenizer's model_max_length, if smaller) fit the model's positions."""
    positions = _positions(model_config)
    known, limit = _tokenizer_limit(tokenizer)
    max_length = config.data.max_length
    if positions is None or not known or min(max_length, limit or max_length) <= positions:
        return
    tokenizer_says = "its tokenizer sets no model_max_length to cut texts to" if limit is None else \
        f"its tokenizer's model_max_length ({limit}) is more too"
    raise ConfigError(f"data: max_length {max_length} is more than the {positions} positions of the {what} {name} "
                      f"(max_position_embeddings), and {tokenizer_says}; set max_length to at most {positions}")


def _check_models(config) -> None:
    from .config_sections import teacher_list
    from .rundir import paths

    trust = config.teacher.trust_remote_code
    spec = config.student
    names = [name for name, _ in teacher_list(config.teacher)]
    if config.teacher.teacher_train and os.path.isfile(os.path.join(paths(config).teacher, "config.json")):
        names = [paths(config).teacher]  # else its backbone, teacher_model, stands for it (the same architecture)
    if config.teacher.teacher_folds and config.teacher.teacher_backbone:
        names.append(config.teacher.teacher_backbone)
    if spec.student_init == "bilstm" and (spec.student_layers is not None or spec.student_num_layers is not None):
        field = "student_layers" if spec.student_layers is not None else "student_num_layers"
        raise ConfigError(f"student: {field} picks the teacher layers a from_teacher student copies; a bilstm "
                          f"student has no teacher layers: unset {field}")
    first = None
    for i, name in enumerate(names):
        model_config = _model_config(name, trust)
        if i == 0:
            first = model_config
        if model_config is not None:
            if not config.teacher.teacher_train and not config.teacher.teacher_folds:
                _check_head(config, name, model_config)
            _check_length(config, "teacher", name, model_config, name)
    if spec.student_init == "from_teacher" and first is not None:
        _check_layers(spec, first, names[0])
        _check_length(config, "student (the teacher's layers)", names[0], first, spec.student_tokenizer or names[0])
    elif spec.student_init in ("from_config", "from_pretrained"):
        base = spec.student_model or names[0]
        model_config = _model_config(base, trust)
        if model_config is not None:
            if spec.student_init == "from_config":
                for key, value in spec.overrides().items():
                    setattr(model_config, key, value)  # a copy: max_position_embeddings may be among them
            _check_length(config, "student", base, model_config, spec.student_tokenizer or base)


def _check_layers(spec, teacher_config, teacher: str) -> None:
    """from_teacher: the layers the student copies are the teacher's (its config's num_hidden_layers)."""
    layers = getattr(teacher_config, "num_hidden_layers", None)
    if not isinstance(layers, int):
        return
    if spec.student_layers is not None:
        bad = [i for i in spec.student_layers if not 0 <= i < layers]
        if bad:
            raise ConfigError(f"student: student_layers must be indices in 0..{layers - 1} (the teacher {teacher} "
                              f"has {layers} layers), got {spec.student_layers}")
    elif spec.student_num_layers is not None:
        from .students import spaced_layers

        spaced_layers(layers, spec.student_num_layers)
