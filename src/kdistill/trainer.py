"""`DistillationTrainer`: the transformers Trainer with the distillation objective, nothing else.

The objective is a weighted sum of named loss terms (`losses.objective`), each logged as its own curve
(`loss_<term>`). The teacher's knowledge comes from one of two sources: *cached* (its logits arrive in the batch as
`teacher_logits`, looked up by the collator, so a step costs what fine-tuning the student costs), or *online*
(teachers given to the trainer run on the same batch in eval mode under no_grad, for knowledge too large to cache).
An online teacher is not part of the model: it is never saved in checkpoints.
"""

import json
import logging
import os
import time
from collections import defaultdict

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .config import DistillationConfig
from .files import write_json
from .errors import UserError
from .losses import (FEATURE_TERMS, TEACHER_FIELDS, LayerProjections, TermInputs, ensemble_logits, layer_map, needs,
                     objective)
from .schedules import value_at

# A checkpoint's running loss sums (DistillationTrainer._save_checkpoint); kdistill_loss_sums_<rank>.json under DDP.
LOSS_SUMS_NAME = "kdistill_loss_sums.json"
_NON_MODEL_KEYS = ("labels", "teacher_logits", "idx", "item_mask", *TEACHER_FIELDS)
# Where the trainer attaches a narrower student's width projections (losses.LayerProjections) while it trains.
PROJECTIONS_NAME = "kdistill_projections"

logger = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    """'42s', '3m05s', '1h02m': a progress line's elapsed and remaining time."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(step: int, max_steps: int, elapsed: float, logs: dict, first_step: int = 0) -> str:
    """'step 150/1135 (13%), loss 0.4312, 2m10s elapsed, about 14m13s left': one training log, for a person.

    `elapsed` is the time since this process began training at `first_step` (above 0 when it resumed a run). The
    time left assumes the remaining steps take as long as this process's steps so far took on average.
    """
    parts = [f"step {step}/{max_steps} ({100 * step / max(max_steps, 1):.0f}%)" if max_steps else f"step {step}"]
    parts += [f"{k} {v:.4g}" for k, v in logs.items() if k == "grad_norm" or k == "loss" or k.startswith("loss_")]
    parts.append(f"{_duration(elapsed)} elapsed")
    if first_step < step < max_steps:
        parts.append(f"about {_duration(elapsed / (step - first_step) * (max_steps - step))} left")
    return ", ".join(parts)


class _LogToLogging(TrainerCallback):
    """Sends the Trainer's log lines to `logging` instead of stdout, where PrinterCallback puts them.

    PrinterCallback stands in for the progress bar when `disable_tqdm` is set (log files, CI), so training logs
    become an INFO progress line (step of total, loss, time elapsed and left); evaluation results go to INFO as
    they are; the full dictionaries go to DEBUG.
    """

    def __init__(self):
        self.start, self.first_step = None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run's state already holds the steps done before, so the rate counts only this process's steps.
        self.start, self.first_step = time.monotonic(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_local_process_zero or not logs:
            return
        logger.debug("step %d: %s", state.global_step, logs)
        elapsed = time.monotonic() - (self.start or time.monotonic())
        if "loss" in logs:
            logger.info("%s", progress_line(state.global_step, state.max_steps, elapsed, logs, self.first_step))
        elif any(k.startswith("eval_") for k in logs):
            shown = {k: v for k, v in logs.items() if k.startswith("eval_") and "runtime" not in k and "per_second" not in k}
            logger.info("evaluation at step %d: %s", state.global_step,
                        ", ".join(f"{k[5:]} {v:.4g}" if isinstance(v, float) else f"{k[5:]} {v}" for k, v in shown.items()))


class _RestoreLossSums(TrainerCallback):
    """Puts back, when a run resumes, the running loss sums its checkpoint saved (see DistillationTrainer).

    A callback because the Trainer sets its sums to zero just before on_train_begin, after everything else it
    restores from the checkpoint.
    """

    def __init__(self, trainer: "DistillationTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._restore_loss_sums()


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' LengthGroupedSampler, shuffled from (seed, epoch) instead of the global torch RNG.

    The Trainer builds its length-grouped sampler without a generator, so each epoch's order is drawn from whatever
    state dropout left the global RNG in. A run resumed mid-epoch then redraws that epoch's order from another state
    and trains on other batches than the run it continues. Seeding per epoch (the Trainer calls set_epoch, through
    accelerate's wrappers, also after skipping the batches a resumed epoch already did) replays the same order, as
    accelerate's seedable sampler does for `train_sampling_strategy: random`.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


class DistillationTrainer(Trainer):
    """Trains a student on `args.objective_weights()` (the strategy's preset, or `args.objective`) at
    `args.temperature`, or at its schedule's value at each step (`args.temperature_schedule`). Scheduled values
    are logged with the loss: `temperature`, `weight_<term>`.

    The loss is a sum over the items of the whole gradient-accumulated batch divided by their number
    (`num_items_in_batch`), so accumulating k batches of n gives the gradient of one batch of k*n.

    A checkpoint also holds the running loss sums the Trainer does not save (`LOSS_SUMS_NAME`): the loss summed
    since the last log (the Trainer's, and each term's), the total drained at the logs so far, and the step the run
    began at. A run resumed from a checkpoint between two logs then logs the same figures as the run it continues:
    the first log after the resume averages its whole window, not just the steps since, and train_loss is the mean
    over all the run's steps, not over this process's only.

    Args:
        task: the task (`kdistill.tasks`), which marks a batch's items (`item_mask`); None: every position.
        online_teachers: (model, weight) pairs run on each batch that has no `teacher_logits`; several combine
            by `losses.ensemble_logits`.
        teacher_tokenizers: each online teacher's tokenizer, checked against the student's (`processing_class`)
            here, since an online teacher reads the student's input ids.
        layer_map: `{student_layer: teacher_layer}` for the feature terms (hidden_mse, pkd, attention_kl, ...);
            None: `uniform`. Feature terms need exactly one online teacher, which then runs on every batch (also
            when its logits come from the cache); a student narrower than its teacher gets learned projections
            (`PROJECTIONS_NAME`), saved in checkpoints but not with the trained student.
    """

    # compute_loss divides by num_items_in_batch, which _get_num_items_in_batch always provides in training.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, task=None, online_teachers=None, teacher_tokenizers=None, layer_map=None, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        weights = kwargs["args"].objective_weights() if isinstance(kwargs.get("args"), DistillationConfig) else {}
        self.layer_pairs, self._projections = (), None
        self._wants_hidden, self._wants_attentions = needs(weights, "student_hidden"), needs(weights, "student_attentions")
        if self._wants_hidden or self._wants_attentions:
            self.layer_pairs, self._projections = _prepare_features(model, online_teachers, layer_map, weights,
                                                                    self._wants_attentions)
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, DistillationConfig):
            raise TypeError("DistillationTrainer needs args=DistillationConfig(...)")
        # Plain nn.Module students name no label argument; the labels still travel in the batch as 'labels'.
        if not self.label_names:
            self.label_names = ["labels"]
        self.task = task
        self.objective_weights = self.args.objective_weights()
        self.temperature = self.args.scheduled("temperature")  # a number, or a schedule of the step
        self.online_teachers = []
        for i, (teacher, weight) in enumerate(online_teachers or []):
            tokenizer = (teacher_tokenizers or [None] * (i + 1))[i]
            check_same_tokenizer(tokenizer, self.processing_class, f"online teacher {i + 1}")
            teacher.to(self.args.device).eval().requires_grad_(False)
            self.online_teachers.append((teacher, float(weight)))
        self._loss_parts: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._resuming_from, self._loss_first_step = None, 0
        self.add_callback(_RestoreLossSums(self))
        # With tqdm disabled the Trainer prints every log line; library code speaks through logging only.
        if self.pop_callback(PrinterCallback) is not None:
            self.add_callback(_LogToLogging)

    def _loss_sums_name(self) -> str:
        # Each process sums its own share of the batches, as each has its own RNG state (rng_state_<rank>.pth).
        if self.args.world_size <= 1:
            return LOSS_SUMS_NAME
        return LOSS_SUMS_NAME.replace(".json", f"_{self.args.process_index}.json")

    def _inner_training_loop(self, *args, resume_from_checkpoint=None, **kwargs):
        # The checkpoint as train() resolved it (resume_from_checkpoint=True: the last one), for _restore_loss_sums.
        self._resuming_from = resume_from_checkpoint
        return super()._inner_training_loop(*args, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _restore_loss_sums(self) -> None:
        checkpoint, self._resuming_from = self._resuming_from, None
        self._loss_first_step = self.state.global_step
        if checkpoint is None:
            return
        name = self._loss_sums_name()
        try:
            with open(os.path.join(checkpoint, name), encoding="utf-8") as fh:
                sums = json.load(fh)
            window_terms = {term: [float(v) for v in values] for term, values in sums["window_terms"].items()}
            window_loss, total = float(sums["window_loss"]), float(sums["total_loss"])
            last_logged, first_step = int(sums["last_logged_step"]), int(sums["first_step"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            why = "an older kdistill wrote it" if isinstance(err, FileNotFoundError) else f"unreadable: {err}"
            logger.warning("checkpoint %s has no usable %s (%s): the first loss logged after resuming and train_loss count "
                           "only the steps from %d on", checkpoint, name, why, self.state.global_step)
            return
        self._tr_loss.fill_(window_loss)  # in place: the Trainer's float32 tensor on its device, summed on from here
        self._total_loss_scalar, self._globalstep_last_logged, self._loss_first_step = total, last_logged, first_step
        self._loss_parts["train"].clear()
        self._loss_parts["train"].update(window_terms)

    def _save_checkpoint(self, model, trial) -> None:
        # Written first, so that trainer_state.json, whose presence marks a checkpoint complete
        # (rundir.resume_point), is still the last file the checkpoint gets.
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        write_json(os.path.join(folder, self._loss_sums_name()), {
            "first_step": self._loss_first_step,
            "last_logged_step": self._globalstep_last_logged,
            "total_loss": self._total_loss_scalar,
            "window_loss": self._tr_loss.item(),
            "window_terms": dict(self._loss_parts["train"]),
        })
        super()._save_checkpoint(model, trial)

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        # log() made the metrics' train_loss the whole run's; the figure train() returns is that one too.
        return result._replace(training_loss=result.metrics["train_loss"])

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler and sampler.generator is None:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            # Group by the global batch: under DDP every process iterates this same sampler and accelerate deals
            # its batches out in turn, so groups of world_size * per-device rows make the processes' batches
            # together one global batch of similar lengths, the batches a single process with that batch size
            # would train on.
            batch = sampler.batch_size * max(1, self.args.world_size)
            return EpochSeededLengthGroupedSampler(batch, sampler.lengths, seed)
        return sampler

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        # Items are rows for sequence classification: unlabelled transfer rows count too, since they carry soft
        # labels. For per-token labels (rank >= 2), the positions with a label.
        # A batch whose task marks its items (words) counts those.
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        count = sum(
            int(b["item_mask"].sum()) if "item_mask" in b else
            b["labels"].numel() if b["labels"].dim() == 1 else int(b["labels"].ne(-100).sum()) for b in batch_samples
        )
        count = torch.tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        # Checkpoints keep the width projections (a resumed run needs them); the trained student does not.
        if self._projections is None or _internal_call:
            return super().save_model(output_dir, _internal_call)
        model = self.accelerator.unwrap_model(self.model)
        delattr(model, PROJECTIONS_NAME)
        try:
            return super().save_model(output_dir, _internal_call)
        finally:
            setattr(model, PROJECTIONS_NAME, self._projections)

    def _feature_scale(self, training: bool, num_items_in_batch) -> float:
        """The factor that gives a feature term's batch mean the logit terms' units: those are sums over the whole
        accumulated batch (all processes) divided by its item count, so a micro-batch's mean counts 1/k of it."""
        if not training or num_items_in_batch is None:
            return 1.0
        scale = 1.0 / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            scale /= self.accelerator.num_processes  # compute_loss multiplies the loss by it again
        return scale

    # How several online teachers combine (losses.ensemble_logits); pipeline.make_trainer sets the run's.
    ensemble_combine = "probabilities"

    def _online_teacher_logits(self, model_inputs: dict) -> torch.Tensor:
        with torch.no_grad():
            outputs = [teacher(**model_inputs) for teacher, _ in self.online_teachers]
        logits = [(o["logits"] if isinstance(o, dict) else o[0]).float() for o in outputs]
        return ensemble_logits(logits, [w for _, w in self.online_teachers], self._temperature(),
                               self.ensemble_combine)

    def _temperature(self) -> float:
        """The temperature of this step: `args.temperature`, or its schedule's value at the global step."""
        return value_at(self.temperature, self.state.global_step, self.state.max_steps)

    def _scheduled_values(self) -> dict[str, float]:
        """What follows a schedule, at the current step: `temperature` and `weight_<term>` (fixed ones are left
        out). Like the Trainer's learning_rate, the value logged at step N is the one the next step trains with."""
        step, total = self.state.global_step, self.state.max_steps
        out = {"temperature": value_at(self.temperature, step, total)} if callable(self.temperature) else {}
        out.update({f"weight_{name}": value_at(w, step, total) for name, w in self.objective_weights.items()
                    if callable(w)})
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        model_inputs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        feature_kwargs = {}
        if self.layer_pairs:
            feature_kwargs = {"output_hidden_states": self._wants_hidden, "output_attentions": self._wants_attentions}
        outputs = model(**model_inputs, **feature_kwargs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        teacher_logits = inputs.get("teacher_logits")
        features = {}
        if self.layer_pairs:
            with torch.no_grad():
                teacher_out = self.online_teachers[0][0](**model_inputs, **feature_kwargs)
            if teacher_logits is None:
                teacher_logits = teacher_out["logits"].float()
            features = _feature_inputs(outputs, teacher_out, self._wants_hidden, self._wants_attentions)
            features.update(attention_mask=model_inputs.get("attention_mask"), layer_pairs=self.layer_pairs,
                            project=self._projections,
                            feature_scale=self._feature_scale(model.training, num_items_in_batch))
        elif teacher_logits is None and self.online_teachers:
            teacher_logits = self._online_teacher_logits(model_inputs)
        terms = TermInputs(
            student_logits=logits,
            labels=inputs.get("labels"),
            teacher_logits=teacher_logits,
            temperature=self._temperature(),
            mask=self.task.item_mask(inputs) if self.task is not None else None,
            num_items=num_items_in_batch,
            jsd_beta=self.args.jsd_beta,
            skew_alpha=self.args.skew_alpha,
            **{k: inputs[k] for k in TEACHER_FIELDS[1:] if k in inputs},
            **features,
        )
        weights = self.objective_weights
        if not model.training and all(getattr(terms, k) is None for k in TEACHER_FIELDS):
            # Evaluation data without soft labels: report the terms that need none, or the hard loss.
            weights = {k: w for k, w in weights.items() if k == "hard_ce" or k in FEATURE_TERMS and features} \
                or {"hard_ce": 1.0}
        loss, parts = objective(weights, terms, step=self.state.global_step, max_steps=self.state.max_steps)
        if self.args.average_tokens_across_devices and self.args.world_size > 1 and num_items_in_batch is not None:
            # num_items counts every process's items while DDP averages gradients over processes.
            loss = loss * self.accelerator.num_processes
            parts = {k: v * self.accelerator.num_processes for k, v in parts.items()}
        mode = "train" if model.training else "eval"
        for name, value in parts.items():
            self._loss_parts[mode][name].append(float(value))
        if return_outputs:
            return loss, {"logits": logits}
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Add each term of the objective as its own curve (loss_hard_ce, loss_soft_kl, ...; eval_loss_*).
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        parts = self._loss_parts[mode]
        if parts:
            # In training each value is a micro-batch's share of its accumulated batch, so the per-step value is
            # their sum over the gradient_accumulation_steps micro-batches.
            scale = self.args.gradient_accumulation_steps if mode == "train" else 1
            prefix = "eval_" if mode == "eval" else ""
            for name, values in parts.items():
                value = sum(values) * scale / len(values)
                if self.args.world_size > 1:
                    # Each process holds only its share of the batches; the logged value is their mean over
                    # processes, as for the Trainer's own loss. Every process logs at the same steps (the Trainer
                    # gathers its loss there too) with the same parts, so the gather cannot wait alone.
                    value = float(self.accelerator.gather(torch.tensor([value], device=self.args.device)).mean())
                logs[f"{prefix}loss_{name}"] = round(value, 6)
            parts.clear()
        if "loss" in logs:  # a training log: the scheduled values as curves beside the loss
            logs.update(self._scheduled_values())
        if "train_loss" in logs:
            # The Trainer's mean is over this process's steps, as it starts its total at 0 on resume; with the
            # restored total it is over all the run's steps (the same value as the Trainer's on a run not resumed).
            logs["train_loss"] = self._total_loss_scalar / max(self.state.global_step - self._loss_first_step, 0.001)
        super().log(logs, start_time)


def check_same_tokenizer(teacher_tokenizer, student_tokenizer, what: str) -> None:
    """An online teacher reads the student's input ids: their tokenizers must map text to the same ids."""
    from .errors import UserError

    if teacher_tokenizer is None or student_tokenizer is None:
        return
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise UserError(
            f"{what}'s tokenizer ({len(teacher_tokenizer)} tokens) differs from the student's "
            f"({len(student_tokenizer)} tokens), and an online teacher reads the student's input ids; give the "
            "student the teacher's tokenizer (student_tokenizer), or use soft_label_source: cache, whose soft "
            "labels are looked up by example and work with any student tokenizer"
        )


def _layers(model) -> int | None:
    return getattr(getattr(model, "config", None), "num_hidden_layers", None)


def _prepare_features(student, online_teachers, spec, weights, attentions: bool):
    """The (student, teacher) layer pairs of the feature terms and the width projections (None: same width),
    attached to the student; checks the models can give what the terms read."""
    terms = ", ".join(name for name in weights if name in FEATURE_TERMS)
    if not online_teachers or len(online_teachers) != 1:
        raise UserError(f"the objective's {terms} read the teacher's hidden states, which need exactly one teacher "
                        f"running in the trainer; got {len(online_teachers or [])}")
    teacher = online_teachers[0][0]
    for what, model in (("student", student), ("teacher", teacher)):
        if _layers(model) is None or not hasattr(model.config, "hidden_size"):
            raise UserError(f"the objective's {terms} need a transformers {what} whose config gives num_hidden_layers "
                            f"and hidden_size; the {what} is a {type(model).__name__}")
    try:
        pairs = tuple(sorted(layer_map(spec, _layers(student), _layers(teacher)).items()))
    except ValueError as err:
        raise UserError(f"distill: {err} (the student has {_layers(student)} layers, the teacher {_layers(teacher)})") \
            from None
    if attentions:
        for model in (student, teacher):
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation("eager")  # sdpa kernels do not return the attention maps
        _no_attention_dropout(student)
        if student.config.num_attention_heads != teacher.config.num_attention_heads:
            logger.info("attention_kl: the student has %d heads, the teacher %d: head-averaged maps are compared",
                        student.config.num_attention_heads, teacher.config.num_attention_heads)
    projections = None
    if student.config.hidden_size != teacher.config.hidden_size:
        projections = LayerProjections(student.config.hidden_size, teacher.config.hidden_size, [s for s, _ in pairs])
        setattr(student, PROJECTIONS_NAME, projections)
        logger.info("feature terms: learned projections from the student's width %d to the teacher's %d "
                    "(%s parameters, not saved with the student)", student.config.hidden_size,
                    teacher.config.hidden_size, f"{sum(p.numel() for p in projections.parameters()):,}")
    logger.info("feature terms %s: student layer -> teacher layer %s", terms,
                ", ".join(f"{s}->{t}" for s, t in pairs))
    return pairs, projections


def _no_attention_dropout(model) -> None:
    """attention_kl compares attention distributions; the maps a model returns in training are after dropout
    (zeros and rescaled rows), so the student's attention dropout is turned off."""
    for module in model.modules():
        dropout = getattr(module, "dropout", None)
        if type(module).__name__.endswith("Attention") and isinstance(dropout, torch.nn.Dropout):
            dropout.p = 0.0


def _feature_inputs(student_out, teacher_out, hidden: bool, attentions: bool) -> dict:
    out = {}
    for key, wanted in (("hidden_states", hidden), ("attentions", attentions)):
        if not wanted:
            continue
        for who, o in (("student", student_out), ("teacher", teacher_out)):
            value = o.get(key) if isinstance(o, dict) else getattr(o, key, None)
            if not value:
                raise UserError(f"the {who} returned no {key}; feature terms need a model that returns them "
                                f"(output_{key}=True)")
            out[f"{who}_{'hidden' if key == 'hidden_states' else 'attentions'}"] = tuple(value)
    return out
