"""Data loading, the label map, tokenisation and the collator, on real rows from ../shared/data."""

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from kdistill.config import DataConfig, UserError
from kdistill.tasks.sequence import SequenceClassification
from kdistill.data import build_label_map, encode_labels, load_split, load_table, tokenize

from conftest import SHARED, SST2


def test_headerless_agnews_with_string_labels_maps_to_sorted_ids():
    data = DataConfig(train_file=str(SHARED / "agnews" / "dev.tsv"), column_names=["text", "label"],
                      max_train_samples=500)
    table = load_split(data, "train")
    assert len(table) == 500
    label2id = build_label_map(table["label"][:])
    assert label2id == {"Business": 0, "Sci/Tech": 1, "Sports": 2, "World": 3}
    ids = encode_labels(table, data, label2id, "agnews")
    assert ids[0] == label2id[table["label"][0]]
    # The same data gives the same map, whatever the row order.
    assert build_label_map(list(reversed(table["label"][:]))) == label2id


def test_integer_labels_keep_numeric_order():
    assert build_label_map([10, 2, 2, 1]) == {"1": 0, "2": 1, "10": 2}
    assert build_label_map([1.0, 0.0]) == {"0": 0, "1": 1}
    with pytest.raises(UserError, match="fraction"):
        build_label_map([0.5, 1.0])
    with pytest.raises(UserError, match="at least 2"):
        build_label_map([1, 1])


def test_unknown_eval_label_names_it():
    data = DataConfig(train_file=str(SHARED / "agnews" / "test.tsv"), column_names=["text", "label"],
                      max_train_samples=50)
    table = load_split(data, "train")
    with pytest.raises(UserError, match="'Sports'|'World'|'Business'|'Sci/Tech'"):
        encode_labels(table, data, {"A": 0, "B": 1}, "agnews test")


def test_tokenize_is_unpadded_with_offsets_and_lengths(word_tokenizer):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    data = DataConfig(train_file=str(SST2 / "train.tsv"), text_column="sentence", max_length=16)
    table = load_table(str(SST2 / "test.tsv"), data).select(range(40))
    encoded = tokenize(table, tokenizer, data, labels=None, index_offset=100)
    assert encoded["idx"][:] == list(range(100, 140))
    assert encoded["labels"][:] == [-100] * 40
    lengths = encoded["length"][:]
    assert lengths == [len(ids) for ids in encoded["input_ids"][:]]
    assert max(lengths) == 16 and min(lengths) < 16  # truncated to max_length, not padded to it


def test_collator_pads_to_longest_and_looks_up_soft_labels_by_index(word_tokenizer):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    data = DataConfig(train_file=str(SST2 / "train.tsv"), text_column="sentence")
    table = load_table(str(SST2 / "train.tsv"), data).select(range(8))
    encoded = tokenize(table, tokenizer, data, labels=[0, 1] * 4)
    logits = torch.arange(16, dtype=torch.float32).reshape(8, 2)
    rows = [encoded[i] for i in (5, 2, 7)]
    batch = SequenceClassification().collator(tokenizer, logits)(rows)
    assert batch["input_ids"].shape == (3, max(r["length"] for r in rows))
    assert torch.equal(batch["teacher_logits"], logits[[5, 2, 7]])
    assert batch["labels"].tolist() == [1, 0, 1]
    assert "length" not in batch
    assert int(batch["attention_mask"].sum()) == sum(r["length"] for r in rows)


def test_blank_texts_and_missing_labels_are_counted(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine", "label": 1}\n{"text": "  \\t ", "label": 0}\n{"text": null, "label": 1}\n'
                    '{"text": "dull", "label": null}\n')
    with pytest.raises(UserError, match=r"rows.jsonl: 2 row\(s\) have an empty 'text'"):
        load_table(str(path), DataConfig(train_file=str(path)))
    path.write_text('{"text": "fine", "label": 1}\n{"text": "dull", "label": null}\n')
    with pytest.raises(UserError, match=r"rows.jsonl: 1 row\(s\) have no 'label'"):
        load_table(str(path), DataConfig(train_file=str(path)))


def test_max_train_samples_does_not_cap_the_transfer_file(tmp_path):
    from kdistill.config import DataConfig
    from kdistill.data import load_split

    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(10)), encoding="utf-8")
    transfer = tmp_path / "transfer.tsv"
    transfer.write_text("text\n" + "".join(f"new {i}\n" for i in range(30)), encoding="utf-8")
    data = DataConfig(train_file=str(train), transfer_file=str(transfer), max_train_samples=4)
    assert len(load_split(data, "train")) == 4 and len(load_split(data, "transfer")) == 30
    data = DataConfig(train_file=str(train), transfer_file=str(transfer), max_transfer_samples=7)
    assert len(load_split(data, "train")) == 10 and len(load_split(data, "transfer")) == 7


def test_a_seeded_random_subset_of_training_rows_instead_of_the_first(tmp_path):
    from kdistill.config import ConfigError, make_config
    from kdistill.data import sample_rows

    assert sample_rows(10, 4) == range(4) and sample_rows(3, 5, seed=1) == range(3)
    drawn = sample_rows(1000, 50, seed=7)
    assert drawn == sorted(drawn) and len(set(drawn)) == 50 and drawn == sample_rows(1000, 50, seed=7)
    assert drawn != sample_rows(1000, 50, seed=8) and max(drawn) > 50
    path = tmp_path / "sorted.tsv"  # a file sorted by label: the first rows are all one class
    path.write_text("sentence\tlabel\n" + "".join(f"text {i}\t{int(i >= 100)}\n" for i in range(200)))
    first = make_config(train_file=str(path), text_column="sentence", max_train_samples=40)
    seeded = make_config(train_file=str(path), text_column="sentence", max_train_samples=40, train_sample_seed=0)
    assert set(load_split(first.data, "train")["label"]) == {0}
    table = load_split(seeded.data, "train")
    assert len(table) == 40 and set(table["label"]) == {0, 1}
    assert table["sentence"] == [f"text {i}" for i in sample_rows(200, 40, seed=0)]
    with pytest.raises(ConfigError, match="train_sample_seed draws max_train_samples rows at random"):
        make_config(train_file=str(path), train_sample_seed=0)
