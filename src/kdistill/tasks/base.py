"""What every task provides, and the collator they share.

A task answers the engine's questions about one kind of problem:

- data: `label_values` (what the label map is built from), `encode_labels`, `prepare` (rows -> model inputs,
  `labels`, `idx`, `length`), `teacher_inputs` (the same rows in chunks for the soft-label pass);
- batching: `pad_inputs` (a list of rows -> a batch of tensors), `collator` (adds labels and the teacher's
  logits, looked up by `idx`);
- items: `item` names what one item is ("row", "word", "token"); `item_mask` marks the items of a batch;
- models: `auto_model`, the transformers Auto class its models load with (None for plain `nn.Module`s);
- predictions: `item_rows` (a prepared split's rows as `predict_items` reads them), `predict_items` (a model's logits
  per item of each row: what the soft-label pass caches and evaluation scores), `item_labels` (the split's labels
  per item);
- outputs: `metrics` (quality and fidelity on a split), `eval_metrics` (the same, given the label map: what
  `kdistill eval` writes), `check_teacher_logits`, `trainer_metrics` (the Trainer's compute_metrics; `trainer_metrics_for`
  gives it for one model, whose config may name the labels);
- export: `export_inputs` and `export_output_axes`, the ONNX signature; `item_logits` (a model's raw outputs as one
  vector per item, for the export's int8 check); `export_notes` (what the export report records of how raw text
  becomes the model's input);
- reports: `headline_metric`, the eval.json key a sweep compares settings on (`kdistill compare`);
- the soft-label pass: `default_top_k` (the cache's top k when the config sets none; None: every logit),
  `predicts_topk` (its `predict_items` takes `top_k` and reduces each batch itself), `rows_shard` (its input rows may
  be dealt to processes under torchrun; else each chunk's items are), `cache_settings` (what else its rows depend on, for the fingerprint);
- files and labels: `read_file` (a file format of its own, e.g. plain text; None: the common readers),
  `build_label_map` (an empty map for a task whose outputs are the vocabulary);
- `check_models`, called when the trainer is built: the student against the teacher's output width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

IGNORE_INDEX = -100


def stack_labels(values: Sequence[Any]) -> Tensor:
    """One class per row -> [B] (long); a list of classes per row (words, tokens) -> [B, L] padded with -100.
    Float labels (regression targets, multi-label vectors) keep their dtype and are stacked as they are."""
    first = values[0] if len(values) else 0
    if isinstance(first, (list, tuple, Tensor)):
        rows = [torch.as_tensor(v) for v in values]
        if rows[0].is_floating_point():
            return torch.stack(rows)
        rows = [r.long() for r in rows]
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=IGNORE_INDEX)
    if isinstance(first, float):
        return torch.tensor(values, dtype=torch.float32)
    return torch.tensor(values, dtype=torch.long)


def gather_teacher_logits(source: Any, idx: Tensor) -> Tensor:
    """The teacher's logits for rows `idx`: [B, C] for one item per row, [B, L, C] (zero-padded) for ragged rows.

    `source` is anything indexable by a LongTensor of rows: a tensor, or a soft-label cache read lazily.
    """
    got = source[idx]
    if isinstance(got, (list, tuple)):
        return torch.nn.utils.rnn.pad_sequence(list(got), batch_first=True, padding_value=0.0)
    return got


class ItemCollator:
    """Pads a batch with the task's `pad_inputs`, stacks its labels and attaches the teacher's logits by `idx`.

    Args:
        pad_inputs: model-input rows (no `idx`, `labels`, `length`) -> a dict of batch tensors.
        teacher_logits: indexed by row (`gather_teacher_logits`), or None for hard-label training.
        combine: several teachers' logits -> one teacher's (`losses.ensemble_logits`), when `teacher_logits`
            is a list of sources.
        weights: the teachers' weights, for a collator that hands several teachers to the loss rather than
            combining them (a causal LM's top-k caches).
    """

    def __init__(self, pad_inputs: Callable[[list[dict]], dict], teacher_logits: Any = None,
                 combine: Callable[[list[Tensor]], Tensor] | None = None, weights: list[float] | None = None):
        self.pad_inputs, self.teacher_logits, self.combine = pad_inputs, teacher_logits, combine
        self.weights = weights

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        idx = torch.tensor([f["idx"] for f in features], dtype=torch.long)
        labels = stack_labels([f["labels"] for f in features])
        model_inputs = [{k: v for k, v in f.items() if k not in ("idx", "labels", "length")} for f in features]
        batch = dict(self.pad_inputs(model_inputs))
        batch["labels"] = labels
        batch["idx"] = idx
        if isinstance(self.teacher_logits, list):
            batch["teacher_logits"] = self.combine([gather_teacher_logits(s, idx) for s in self.teacher_logits])
        elif self.teacher_logits is not None:
            batch["teacher_logits"] = gather_teacher_logits(self.teacher_logits, idx)
        return batch


def flat_items(items: Tensor | list[Tensor], labels: Any = None) -> tuple[Tensor, Tensor | None]:
    """Items' logits and labels as two flat tensors, [items, C] and [items], whatever the task's layout.

    `items` and `labels` are what `item_logits` and `item_labels` give: one vector (label) per row, or per row a
    [items_i, C] tensor beside that row's labels. A row's items may stop before its labels do (words cut by
    truncation), and an all-zero vector marks an item the model never saw (a word with no sub-token): both are left
    out, as are items labelled IGNORE_INDEX. Without labels (None), only the items the model saw are kept.
    """
    if isinstance(items, Tensor):
        return items, None if labels is None else torch.as_tensor(labels)
    if labels is None:
        return torch.cat([row[row.ne(0).any(dim=-1)] for row in items]), None
    logits, kept = [], []
    for row, row_labels in zip(items, labels):
        row_labels = torch.as_tensor(row_labels)[: len(row)]
        keep = row[: len(row_labels)].ne(0).any(dim=-1) & row_labels.ne(IGNORE_INDEX)
        logits.append(row[: len(row_labels)][keep])
        kept.append(row_labels[keep])
    return torch.cat(logits), torch.cat(kept)


class Task:
    """The base of every task: the defaults suit classification with one label per row."""

    name = ""
    item = "row"
    auto_model: str | None = None
    export_inputs: tuple[str, ...] = ()
    export_output_axes: dict[str, dict[int, str]] = {"logits": {0: "batch"}}
    export_notes: dict[str, str] = {}
    headline_metric = "accuracy"
    default_top_k: int | None = None
    predicts_topk = False
    rows_shard = True
    # Whether a transfer row carries its own targets (a language model's text is its next tokens), so a student
    # with no teacher term (strategy hard) trains on transfer rows too; a classifier's are unlabelled.
    transfer_labelled = False
    # File extensions `read_file` reads itself: data.check_file reads such a file whole to check it.
    own_formats: tuple[str, ...] = ()

    def read_file(self, path: str, config: Any, labelled: bool) -> Any:
        """A data file as a datasets.Dataset, for a task with a format of its own; None: the common readers."""
        return None

    def build_label_map(self, table: Any, config: Any, source: str) -> dict[str, int]:
        from ..data import build_label_map

        return build_label_map(self.label_values(table, config), source)

    def cache_settings(self, config: Any) -> dict:
        """Data settings beyond the common ones (data.max_length, ...) that change the teacher's cached outputs."""
        return {}

    def check_models(self, student: torch.nn.Module, teacher_classes: int | None, weights: dict) -> None:
        """Refuse a student whose outputs cannot be compared with the teacher's (`teacher_classes` wide; None when
        the objective reads no teacher): nothing to check by default (the label count is checked elsewhere)."""

    def pad_inputs(self, tokenizer: Any = None) -> Callable[[list[dict]], dict]:
        """A list of rows -> a batch of tensors: the tokenizer's own padding (tasks without a tokenizer override it)."""
        return lambda rows: dict(tokenizer.pad(rows, return_tensors="pt"))

    def collator(self, tokenizer: Any = None, teacher_logits: Any = None, **kwargs: Any) -> ItemCollator:
        return ItemCollator(self.pad_inputs(tokenizer), teacher_logits, **kwargs)

    def item_mask(self, batch: dict[str, Tensor]) -> Tensor | None:
        """Which positions of the batch's logits are items: the `item_mask` a task's collator puts in the batch
        (words, predicted tokens), or None, all of them (one item per row: no collator sets it)."""
        return batch.get("item_mask")

    def item_rows(self, table: Any, tokenizer: Any) -> list[dict]:
        return self.model_rows(table, tokenizer)

    def predict_items(self, model: torch.nn.Module, rows: list[dict], tokenizer: Any, batch_size: int = 64,
                      progress: Callable[[int], None] | None = None) -> Tensor | list[Tensor]:
        """A model's logits for each row's items: [rows, C] for one item per row, else a list of [items_i, C]."""
        from ..soft_labels.produce import predict_logits

        return predict_logits(model, rows, self.pad_inputs(tokenizer), batch_size=batch_size, progress=progress)

    def item_logits(self, logits: Tensor | list[Tensor], rows: list[dict]) -> Tensor | list[Tensor]:
        """`predict_logits`' output over `rows` (as `item_rows` gives them) as one vector per item: what
        `predict_items` returns. One item per row: the logits as they are."""
        return logits

    def item_labels(self, table: Any) -> Tensor | list[Tensor]:
        return stack_labels(table["labels"][:])

    def seen_item_labels(self, table: Any) -> Tensor | list[Tensor]:
        """The labels of the items the soft-label pass caches, one per cached item (the soft-label diagnostics score
        the teacher on them); `item_labels` unless some items never reach the model (a tagger's truncated words)."""
        return self.item_labels(table)

    def check_teacher_logits(self, teacher_logits: Any, rows: int, num_labels: int) -> None:
        from ..errors import UserError

        if tuple(teacher_logits.shape) != (rows, num_labels):
            raise UserError(
                f"the teacher's logits for the test data have shape {tuple(teacher_logits.shape)} but the data has "
                f"{rows} rows and the student {num_labels} labels; delete the soft-label cache to recompute"
            )

    def eval_metrics(self, student_logits: Any, labels: Any, teacher_logits: Any | None,
                     label2id: dict[str, int]) -> dict[str, Any]:
        return self.metrics(student_logits, labels, teacher_logits, len(label2id))

    def metrics(self, student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                num_labels: int) -> dict[str, float]:
        from .. import metrics

        return metrics.classification_metrics(student_logits, labels, teacher_logits, num_labels)

    def trainer_metrics(self, pred: Any) -> dict[str, float]:
        from .. import metrics

        return {"accuracy": metrics.accuracy(pred.predictions, pred.label_ids)}

    def trainer_metrics_for(self, model: Any) -> Callable[[Any], dict[str, float]]:
        """The Trainer's compute_metrics for `model` (a task whose metrics need the label names reads them from its
        config): `trainer_metrics` by default."""
        return self.trainer_metrics
