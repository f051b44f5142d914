"""Configuration: one dataclass per concern, read from YAML and overridden by flags.

A YAML file has up to four sections, each holding the fields of one dataclass:

    data:     DataConfig        (files, columns, tokenisation)
    teacher:  TeacherConfig     (backbone or fine-tuned teacher, its fine-tuning)
    student:  StudentConfig     (how the student is built)
    distill:  DistillationConfig (strategy, temperature, alpha + every TrainingArguments field)

Field names are unique across the four, so the same names work as flags
(`--temperature 4`) and in Python (`DistillationConfig(temperature=4, ...)`).
"""

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

from .errors import ConfigError, UserError, raise_on_usage_error  # noqa: F401 - UserError: others import it from here
from . import schedules
from .losses import SOFT_LOSSES, STRATEGIES, TERMS, TOPK_SOFT_LOSS, check_weights, preset_weights
from .losses.objective import TOPK_FIELDS
from .losses.features import LAYER_MAP_RULES, layer_map
from .validate import check_fields
from .config_sections import (  # noqa: F401 - re-exported: the config's public names stay config.py's
    DATA_FILE_FIELDS, SOFT_LABEL_SOURCES, STUDENT_INITS, TEACHER_CALIBRATIONS, DataConfig, StudentConfig,
    TeacherConfig, _field_names, _json_field, _unknown_key_error, check_data_files, read_yaml, teacher_list,
)


@dataclass
class DistillationConfig(TrainingArguments):
    """`transformers.TrainingArguments` plus the distillation knobs.

    The defaults differ from TrainingArguments where distillation on a CPU wants it: length-grouped batches
    (most sentences are short, padding to the longest in a random batch wastes compute), one saved checkpoint.
    """

    output_dir: str = field(default="runs/kdistill", metadata={"help": "Run directory: teacher/, soft_labels/, student/, eval.json."})
    strategy: str = field(default="soft", metadata={"help": f"Student loss: one of {', '.join(STRATEGIES)}."})
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature T of the soft loss (> 0); to "
                                                      "follow the step, see temperature_schedule."})
    alpha: float = field(default=0.5, metadata={"help": "mixed: loss = alpha * soft + (1 - alpha) * hard; to follow "
                                                "the step, see alpha_schedule."})
    soft_loss: str = field(default="kl", metadata={"help": f"Soft loss: one of {', '.join(SOFT_LOSSES)}."})
    objective: str | None = field(
        default=None,
        metadata={"help": f"The student's loss as named terms and weights, e.g. {{soft_kl: 0.7, hard_ce: 0.3}} "
                  f"(terms: {', '.join(TERMS)}); replaces the preset that strategy, alpha and soft_loss make. A "
                  "weight may be a schedule mapping, e.g. {soft_kl: {schedule: linear, from: 1, to: 0}, hard_ce: 1}."},
    )
    temperature_schedule: str | None = field(
        default=None,
        metadata={"help": "The temperature as a function of the step: a mapping such as {schedule: cosine, from: 8, "
                  f"to: 1, start: 0, end: null}} (kinds: {', '.join(schedules.KINDS)}; start/end are steps, end null "
                  "the last; step takes from, to, at; annealing is Annealing-KD's, Jafari et al. 2021), JSON on the "
                  "command line. In YAML or Python `temperature` may hold the mapping itself. temperature then "
                  "holds the schedule's starting value, which the soft-label diagnostics and several cached "
                  "teachers' combination use."},
    )
    alpha_schedule: str | None = field(
        default=None,
        metadata={"help": "mixed: alpha as a function of the step, a mapping like temperature_schedule's (kinds: "
                  f"{', '.join(schedules.WEIGHT_KINDS)}; values in [0, 1]): the soft weight is alpha(t), the hard "
                  "weight 1 - alpha(t). In YAML or Python `alpha` may hold the mapping itself."},
    )
    layer_map: str | None = field(
        default=None,
        metadata={"help": "Which teacher layer each student layer learns from in the feature terms (hidden_mse, "
                  "hidden_cosine, pkd, attention_kl): a mapping {student_layer: teacher_layer} (0-based), 'uniform' "
                  "(every k-th teacher layer, ending at the last) or 'last' (the teacher's last layers); default: "
                  "the layers a from_teacher student was copied from, else uniform."},
    )
    jsd_beta: float = field(default=0.5, metadata={"help": "lm_jsd: the mixture weight beta of the generalised JSD, "
                                                   "in (0, 1) (GKD, Agarwal et al. 2024)."})
    skew_alpha: float = field(default=0.1, metadata={"help": "lm_skew_forward_kl / lm_skew_reverse_kl: the share "
                                                     "alpha of the other side mixed in, in [0, 1) (DistiLLM, Ko et al. "
                                                     "2024)."})
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
        # Before check_fields: a temperature or alpha given as a mapping becomes its schedule's starting value.
        _move_schedule(self, "temperature", dict(low=0.0, open_low=True))
        _move_schedule(self, "alpha", dict(low=0.0, high=1.0, kinds=schedules.WEIGHT_KINDS))
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
                if isinstance(weight, dict):
                    weights[name] = schedules.parse(weight, f"distill: objective weight of {name!r}", low=0.0,
                                                    kinds=schedules.WEIGHT_KINDS).spec()
                elif isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                    raise ConfigError(f"distill: objective weight of {name!r} must be a number >= 0 or a schedule "
                                      f"mapping, got {weight!r}")
            self.objective = json.dumps(weights)
        if self.layer_map is not None:
            value = self.layer_map
            if isinstance(value, str) and value.strip() in LAYER_MAP_RULES:
                self.layer_map = value.strip()
            else:
                value = _json_field(value, "distill: layer_map", dict)
                try:  # bounds are checked against the models' layer counts when the trainer is built
                    layer_map(value, 10**6, 10**6)
                except ValueError as err:
                    raise ConfigError(f"distill: {err}") from None
                self.layer_map = json.dumps({str(k): v for k, v in value.items()})
        super().__post_init__()

    def layer_map_spec(self):
        """`layer_map` as `losses.features.layer_map` takes it: None, a rule name, or a {student: teacher} dict."""
        if self.layer_map is None or self.layer_map in LAYER_MAP_RULES:
            return self.layer_map
        return json.loads(self.layer_map)

    def objective_weights(self) -> dict[str, "float | schedules.Schedule"]:
        """The objective's terms and weights (numbers or `schedules.Schedule`s): `objective` if given, else the
        strategy's preset, whose mixed weights follow `alpha_schedule` (soft alpha(t), hard 1 - alpha(t))."""
        alpha = self.scheduled("alpha")
        if isinstance(alpha, schedules.Schedule) and (self.objective is not None or self.strategy != "mixed"):
            _warn_once(f"alpha_schedule weighs strategy mixed's soft and hard parts; with "
                       f"{'objective' if self.objective is not None else 'strategy ' + self.strategy} it does "
                       "nothing (give a term's weight a schedule in objective instead)")
        if self.objective is not None:
            return {name: schedules.parse(w) if isinstance(w, dict) else float(w)
                    for name, w in json.loads(self.objective).items()}
        weights = preset_weights(self.strategy, self.alpha, self.soft_loss)
        if self.strategy == "mixed" and isinstance(alpha, schedules.Schedule):
            soft = next(iter(weights))
            weights = {soft: alpha, "hard_ce": alpha.complement()}
        return weights

    def scheduled(self, name: str) -> "float | schedules.Schedule":
        """`temperature` or `alpha` as the run uses it: its schedule if it has one, else its number."""
        spec = getattr(self, f"{name}_schedule")
        return schedules.parse(json.loads(spec)) if spec is not None else getattr(self, name)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A warning logged once per process (objective_weights is read at every step's setup, and by each sweep cell)."""
    if message not in _WARNED:
        _WARNED.add(message)
        logging.getLogger(__name__).warning(message)


def _move_schedule(config: "DistillationConfig", name: str, bounds: dict) -> None:
    """Check `<name>_schedule` (or a mapping given as `name` itself, moved there), store it as canonical JSON and set
    `name` to its starting value. A number in `name` beside a schedule is refused unless it is that value (or the
    field's default, which only means no number was given)."""
    value, spec = getattr(config, name), getattr(config, f"{name}_schedule")
    given_as_value = isinstance(value, (dict, schedules.Schedule))
    if given_as_value:
        if spec is not None:
            raise ConfigError(f"distill: {name} is a schedule and {name}_schedule is set too; give one of them")
        spec = value
    if spec is None:
        return
    where = f"distill: {name}_schedule" if not given_as_value else f"distill: {name}"
    if isinstance(spec, str):
        spec = _json_field(spec, where, dict)
    schedule = schedules.parse(spec, where, **bounds)
    default = next(f.default for f in dataclasses.fields(config) if f.name == name)
    if not given_as_value and value not in (default, schedule.initial):
        raise ConfigError(f"distill: {name} {value!r} and {name}_schedule ({schedule.name}) are both set; give one "
                          f"of them")
    setattr(config, name, schedule.initial)
    setattr(config, f"{name}_schedule", json.dumps(schedule.spec()))


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
            if not (self.data.validation_file or self.data.dataset_name or self.data.train_fraction is not None):
                raise ConfigError("teacher: teacher_calibration: temperature fits the teacher's temperature on the "
                                  "validation data; set validation_file")
            if self.distill.soft_label_source != "cache":
                raise ConfigError("teacher: teacher_calibration works on cached soft labels; use "
                                  "soft_label_source: cache")
        self._check_top_k()

    def soft_label_top_k(self) -> int | None:
        """The k of the soft-label cache's top-k payload: teacher.soft_label_top_k, else the task's default; None
        (also for soft_label_top_k: 0) for every logit. An online teacher's logits are never cut."""
        from .tasks import get_task

        if self.distill.soft_label_source != "cache":
            return None
        k = self.teacher.soft_label_top_k
        return (get_task(self.data.task).default_top_k if k is None else k) or None

    def _check_top_k(self) -> None:
        """A top-k cache feeds the lm_ terms only: the preset's KL becomes its top-k form (the same divergence over
        the k + 1 buckets); a dense-only term is refused, as is an lm_ term without a top-k cache."""
        d, top_k = self.distill, self.soft_label_top_k()
        if top_k and d.objective is None:
            d.soft_loss = TOPK_SOFT_LOSS.get(d.soft_loss, d.soft_loss)
        names = d.objective_weights() if d.strategy != "hard" or d.objective is not None else {}
        dense = [n for n in names if "teacher_logits" in TERMS[n].needs]
        topk = [n for n in names if set(TOPK_FIELDS) & set(TERMS[n].needs)]
        if top_k and dense:
            raise ConfigError(f"distill: {dense[0]} reads the teacher's full logits, but the soft-label cache keeps "
                              f"its top {top_k} (soft_label_top_k); use an lm_ term (soft_loss: forward_kl, "
                              "reverse_kl, jsd, ...), or soft_label_top_k: 0 for every logit")
        if topk and not top_k:
            raise ConfigError(f"distill: {topk[0]} reads a top-k soft-label cache; set soft_label_top_k (and "
                              "soft_label_source: cache), or use soft_kl")

    @property
    def output_dir(self) -> str:
        return self.distill.output_dir


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
