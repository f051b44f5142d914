"""Sequence classification: one text (or text pair) per row, one label per row, one logit vector per row."""

from __future__ import annotations

from collections.abc import Iterator

from .. import data
from .base import Task


class SequenceClassification(Task):
    name = "sequence_classification"
    item = "row"
    auto_model = "AutoModelForSequenceClassification"
    export_inputs = ("input_ids", "attention_mask", "token_type_ids")
    export_output_axes = {"logits": {0: "batch"}}

    def label_values(self, table, config: data.DataConfig) -> list:
        return table[config.label_column]

    def encode_labels(self, table, config: data.DataConfig, label2id: dict[str, int], source: str) -> list[int]:
        return data.encode_labels(table, config, label2id, source)

    def prepare(self, table, tokenizer, config: data.DataConfig, labels: list | None, index_offset: int = 0,
                source: str = "data", who: str = "tokenizer"):
        return data.tokenize(table, tokenizer, config, labels, index_offset=index_offset, source=source, who=who)

    def teacher_inputs(self, table, tokenizer, config: data.DataConfig, chunk_rows: int, source: str,
                       who: str) -> Iterator[list[dict]]:
        return data.encode_chunks(table, tokenizer, config, chunk_rows, source, who)

    def model_rows(self, table, tokenizer) -> list[dict]:
        """The model-input fields of a prepared split as a list of rows (read column-wise: row access is slow)."""
        names = [k for k in tokenizer.model_input_names if k in table.column_names]
        return [dict(zip(names, values)) for values in zip(*(table[k][:] for k in names))]

