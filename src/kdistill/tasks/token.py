"""Token classification (named entities): a sentence of words per row, an IOB2 tag per word.

Words are split into sub-tokens (`is_split_into_words=True`); a word's label sits on its first sub-token and the
others are ignored (-100), or with `label_all_tokens` every sub-token carries it (continuations of a `B-X` as
`I-X`). The items are words: `item_mask` marks each word's first sub-token (all of its sub-tokens with
`label_all_tokens`), and the losses and `num_items` count those.

The teacher's soft labels are its logits at each word's first sub-token, stored per sentence as [words, tags] in
the ragged cache: row r holds one vector per word of sentence r, up to the last word the teacher saw (a sentence
cut at max_length keeps the words before the cut). A student with another tokenizer reads them by (sentence, word):
the collator places word j's vector on the student's own sub-token(s) of word j. A word inside that span to which
the teacher's tokenizer gave no sub-token at all is stored as a zero vector, which the collator reads as "no soft
label" (a real model's logits are never all exactly 0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from .base import IGNORE_INDEX, ItemCollator, Task, gather_teacher_logits, stack_labels

logger = logging.getLogger(__name__)

# Counts already warned of in this process (a split is tokenised by the teacher pass, the student and evaluation).
_LOST_REPORTED: set[tuple] = set()
_TASK_FIELDS = ("word_ids", "word_labels", "items")


class TagIds(list):
    """Per-sentence lists of tag ids, and for `label_all_tokens` the id of each `B-X`'s `I-X` (`inside`)."""

    inside: dict[int, int]


def encode_tags(tags: Sequence[Sequence[str]], label2id: dict[str, int], source: str) -> TagIds:
    """Each sentence's tags as ids; a UserError naming the tags the model does not know."""
    unknown = sorted({t for row in tags for t in row} - set(label2id))
    if unknown:
        raise UserError(f"{source}: tag(s) {', '.join(map(repr, unknown[:5]))} are not among the model's labels "
                        f"({', '.join(label2id)})")
    out = TagIds([label2id[t] for t in row] for row in tags)
    out.inside = {i: label2id.get("I-" + tag[2:], i) for tag, i in label2id.items() if tag.startswith("B-")}
    return out


def _max_length(tokenizer, max_length: int) -> int:
    return min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)


def align(words: Sequence[Sequence[str]], tokenizer, max_length: int, tags: Sequence[Sequence[int]] | None = None,
          label_all_tokens: bool = False, inside: dict[int, int] | None = None) -> tuple[dict, list, list, list, int, int]:
    """Tokenise sentences of words and put each word's label on its sub-tokens.

    Returns (the tokenizer's encoding, per row the word of each sub-token (-1 for special tokens), per row the
    sub-tokens' labels, per row which sub-tokens are items (1) , how many words have no sub-token (lost their
    labels), how many sentences were cut).

    Args:
        tags: per row the words' label ids (None: unlabelled, every label -100).
        label_all_tokens: label every sub-token of a word, not only its first; `inside` maps a `B-X` id to its
            `I-X` id for the continuations.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"token_classification needs a fast tokenizer (it maps sub-tokens to words); "
                        f"{type(tokenizer).__name__} is not one")
    limit = _max_length(tokenizer, max_length)
    enc = tokenizer([list(w) for w in words], is_split_into_words=True, truncation=True, max_length=limit)
    word_ids, labels, items, lost, cut = [], [], [], 0, 0
    for r, sentence in enumerate(words):
        ids = [-1 if w is None else w for w in enc.word_ids(r)]
        seen = {w for w in ids if w >= 0}
        lost += len(sentence) - len(seen)
        cut += bool(seen) and max(seen) < len(sentence) - 1 and len(ids) >= limit
        row, marks, previous = [], [], -1
        for w in ids:
            first = w >= 0 and w != previous
            item = first or (w >= 0 and label_all_tokens)
            marks.append(int(item))
            if not item or tags is None:
                row.append(IGNORE_INDEX)
            else:
                label = tags[r][w]
                row.append(label if first else (inside or {}).get(label, label))
            previous = w
        word_ids.append(ids)
        labels.append(row)
        items.append(marks)
    return enc, word_ids, labels, items, lost, cut


def _report_lost(source: str, lost: int, words: int, cut: int, max_length: int, who: str) -> None:
    key = (source, lost, words, cut, max_length)
    if lost and key not in _LOST_REPORTED:
        _LOST_REPORTED.add(key)
        logger.warning("%s: %d of %d words lost their labels (%s): %d sentence(s) longer than max_length=%d tokens "
                       "were cut%s", source, lost, words, who, cut, max_length,
                       "" if cut else ", and some words have no sub-token")


def word_logits(logits: Tensor, word_ids: Sequence[int]) -> Tensor:
    """A row's per-sub-token logits [L, C] as one vector per word, at each word's first sub-token: [words seen, C],
    up to the last word that has a sub-token; a word without one in between is a zero vector."""
    first: dict[int, int] = {}
    for p, w in enumerate(word_ids[: len(logits)]):
        if w >= 0 and w not in first:
            first[w] = p
    out = logits.new_zeros((max(first) + 1 if first else 0, logits.shape[-1]))
    if first:
        out[list(first)] = logits[list(first.values())]
    return out


class TokenCollator(ItemCollator):
    """Pads a batch of sentences; places the teacher's per-word vectors on the student's sub-tokens and marks the
    items (`item_mask`): the sub-tokens `prepare` marked (each word's first, or all with `label_all_tokens`) that
    have a teacher vector when the batch has soft labels."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        idx = torch.tensor([f["idx"] for f in features], dtype=torch.long)
        skip = ("idx", "labels", "length", *_TASK_FIELDS)
        batch = dict(self.pad_inputs([{k: v for k, v in f.items() if k not in skip} for f in features]))
        batch["labels"] = labels = stack_labels([f["labels"] for f in features])
        batch["idx"] = idx
        positions, words = [], []  # (row, sub-token) -> (row, word) of every item
        for b, f in enumerate(features):
            for p, (w, item) in enumerate(zip(f["word_ids"], f["items"])):
                if item:
                    positions.append((b, p))
                    words.append((b, w))
        mask = torch.zeros(labels.shape, dtype=torch.bool)
        if positions:
            mask[tuple(torch.tensor(positions).T)] = True
        if self.teacher_logits is not None:
            sources = self.teacher_logits if isinstance(self.teacher_logits, list) else [self.teacher_logits]
            per_word = [gather_teacher_logits(s, idx) for s in sources]  # [B, W, C] each, zero-padded
            width = min(t.shape[1] for t in per_word)
            per_word = [t[:, :width] for t in per_word]
            words_t = per_word[0] if len(per_word) == 1 else self.combine(per_word)
            has = torch.stack([t.ne(0).any(dim=-1) for t in per_word]).all(dim=0)  # [B, W]: a vector there
            teacher = words_t.new_zeros((*labels.shape, words_t.shape[-1]))
            if positions:
                pos, wd = torch.tensor(positions), torch.tensor(words)
                ok = wd[:, 1] < width
                pos, wd = pos[ok], wd[ok]
                ok = has[wd[:, 0], wd[:, 1]]
                pos, wd = pos[ok], wd[ok]
                teacher[pos[:, 0], pos[:, 1]] = words_t[wd[:, 0], wd[:, 1]]
                mask = torch.zeros_like(mask)
                mask[pos[:, 0], pos[:, 1]] = True
            batch["teacher_logits"] = teacher
        batch["item_mask"] = mask
        return batch


class TokenClassification(Task):
    name = "token_classification"
    item = "word"
    auto_model = "AutoModelForTokenClassification"
    export_inputs = ("input_ids", "attention_mask", "token_type_ids")
    export_output_axes = {"logits": {0: "batch", 1: "sequence"}}
    # How kdistill.deploy.runtime turns a raw text into words (the export report records it): CoNLL-style data has
    # one word per whitespace-separated token, punctuation included ("lamb ." not "lamb.").
    export_notes = {"words": "whitespace"}
    headline_metric = "f1"

    # --- data
    def label_values(self, table, config) -> list[str]:
        return [t for row in table[config.label_column][:] for t in row]

    def encode_labels(self, table, config, label2id: dict[str, int], source: str) -> TagIds:
        return encode_tags(table[config.label_column][:], label2id, source)

    def _encode(self, words, tokenizer, config, tags, source: str, who: str):
        enc, word_ids, labels, items, lost, cut = align(words, tokenizer, config.max_length, tags,
                                                        config.label_all_tokens, getattr(tags, "inside", None))
        _report_lost(source, lost, sum(len(w) for w in words), cut, _max_length(tokenizer, config.max_length), who)
        return enc, word_ids, labels, items

    def prepare(self, table, tokenizer, config, labels: list | None, index_offset: int = 0, source: str = "data",
                who: str = "tokenizer"):
        import datasets

        words = table[config.text_column][:]
        enc, word_ids, token_labels, items = self._encode(words, tokenizer, config, labels, source, who)
        columns = {k: list(v) for k, v in enc.items()}
        columns["word_ids"] = word_ids
        columns["items"] = items
        columns["labels"] = token_labels
        columns["word_labels"] = list(labels) if labels is not None else [[IGNORE_INDEX] * len(w) for w in words]
        columns["idx"] = list(range(index_offset, index_offset + len(words)))
        columns["length"] = [len(ids) for ids in enc["input_ids"]]
        return datasets.Dataset.from_dict(columns)

    def teacher_inputs(self, table, tokenizer, config, chunk_rows: int, source: str,
                       who: str) -> Iterator[list[dict]]:
        lost = cut = total = 0
        for start in range(0, len(table), chunk_rows):
            words = table[start : start + chunk_rows][config.text_column]
            enc, word_ids, _, _, n_lost, n_cut = align(words, tokenizer, config.max_length)
            lost, cut, total = lost + n_lost, cut + n_cut, total + sum(len(w) for w in words)
            names = [k for k in tokenizer.model_input_names if k in enc]
            yield [{**dict(zip(names, values)), "word_ids": ids}
                   for values, ids in zip(zip(*(enc[k] for k in names)), word_ids)]
        _report_lost(source, lost, total, cut, _max_length(tokenizer, config.max_length), who)

    def model_rows(self, table, tokenizer) -> list[dict]:
        names = [k for k in tokenizer.model_input_names if k in table.column_names]
        return [dict(zip(names, values)) for values in zip(*(table[k][:] for k in names))]

    def item_rows(self, table, tokenizer) -> list[dict]:
        return [{**row, "word_ids": ids} for row, ids in zip(self.model_rows(table, tokenizer), table["word_ids"][:])]

    def item_labels(self, table) -> list[Tensor]:
        return [torch.tensor(row, dtype=torch.long) for row in table["word_labels"][:]]

    def seen_item_labels(self, table) -> list[Tensor]:
        # the words up to the last with a sub-token, as word_logits keeps them: a sentence cut at max_length caches
        # no vector for the words past the cut
        return [torch.tensor(row[: max((w for w in ids if w >= 0), default=-1) + 1], dtype=torch.long)
                for row, ids in zip(table["word_labels"][:], table["word_ids"][:])]

    # --- batches and models
    def collator(self, tokenizer: Any = None, teacher_logits: Any = None, **kwargs: Any) -> TokenCollator:
        return TokenCollator(self.pad_inputs(tokenizer), teacher_logits, **kwargs)

    def predict_items(self, model, rows: list[dict], tokenizer, batch_size: int = 64,
                      progress: Callable[[int], None] | None = None) -> list[Tensor]:
        from ..soft_labels.produce import predict_logits

        model_rows = [{k: v for k, v in r.items() if k not in _TASK_FIELDS} for r in rows]
        logits = predict_logits(model, model_rows, self.pad_inputs(tokenizer), batch_size=batch_size,
                                progress=progress)
        return self.item_logits(logits, rows)

    def item_logits(self, logits, rows: list[dict]) -> list[Tensor]:
        """Per-sub-token logits (a [L_i, C] tensor per row, or [rows, L, C]) as each word's: [words seen, C]."""
        return [word_logits(row, r["word_ids"]) for row, r in zip(logits, rows)]

    # --- outputs
    def check_teacher_logits(self, teacher_logits, rows: int, num_labels: int) -> None:
        widths = {int(t.shape[-1]) for t in teacher_logits}
        if len(teacher_logits) != rows or widths - {num_labels}:
            raise UserError(f"the teacher's soft labels for the test data hold {len(teacher_logits)} sentences of "
                            f"{sorted(widths)} classes but the data has {rows} sentences and the student "
                            f"{num_labels} labels; delete the soft-label cache to recompute")

    def eval_metrics(self, student_logits, labels, teacher_logits, label2id: dict[str, int]) -> dict:
        from .. import metrics

        names = [k for k, _ in sorted(label2id.items(), key=lambda kv: kv[1])]
        return metrics.token_classification_metrics(student_logits, labels, teacher_logits, names)

    def trainer_metrics(self, pred: Any) -> dict[str, float]:
        import numpy as np

        labels = np.asarray(pred.label_ids)
        keep = labels != IGNORE_INDEX
        preds = np.asarray(pred.predictions).argmax(-1)
        return {"accuracy": float((preds[keep] == labels[keep]).mean()) if keep.any() else float("nan")}

    def trainer_metrics_for(self, model) -> Callable[[Any], dict[str, float]]:
        """Word accuracy, plus entity F1 (seqeval, strict IOB2) when the model's config names its tags: what a sweep
        chooses its settings on (`validation_f1`). The F1 is over the labelled sub-tokens, each word's first unless
        `label_all_tokens` labels them all (then it counts entities over sub-tokens, an approximation)."""
        id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
        names = [str(id2label.get(i, "")) for i in range(len(id2label))]
        if not any(n.startswith("B-") for n in names):
            return self.trainer_metrics
        return lambda pred: {**self.trainer_metrics(pred), "f1": self._entity_f1(pred, names)}

    @staticmethod
    def _entity_f1(pred: Any, names: list[str]) -> float:
        import numpy as np

        from .. import metrics

        labels, logits = np.asarray(pred.label_ids), np.asarray(pred.predictions)
        keep = labels != IGNORE_INDEX
        rows = [r for r in range(len(labels)) if keep[r].any()]
        if not rows:
            return float("nan")
        return metrics.token_classification_metrics([torch.from_numpy(logits[r][keep[r]]) for r in rows],
                                                     [labels[r][keep[r]] for r in rows], None, names)["f1"]
