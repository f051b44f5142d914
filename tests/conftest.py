"""Shared fixtures: real SST-2 rows from ../shared/data and tiny BERTs built from a config, all offline."""

import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SST2 = SHARED / "sst2"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def read_sst2_sentences(n: int) -> list[str]:
    with open(SST2 / "train.tsv", encoding="utf-8") as fh:
        next(fh)
        return [line.split("\t")[0] for _, line in zip(range(n), fh)]


def read_sst2_rows(split: str, n: int) -> tuple[list[str], list[int]]:
    """The first `n` rows of an SST-2 file (train, dev or test) as texts and integer labels, read without kdistill,
    so a test can recompute a metric from the same rows the run used (runs take a split's first rows)."""
    texts, labels = [], []
    with open(SST2 / f"{split}.tsv", encoding="utf-8") as fh:
        next(fh)
        for _, line in zip(range(n), fh):
            text, label = line.rstrip("\n").split("\t")
            texts.append(text)
            labels.append(int(label))
    return texts, labels


def make_word_tokenizer(directory: Path, vocab_size: int = 2000, lowercase_pieces: bool = False) -> str:
    """A word-level tokenizer trained on SST-2 sentences, saved as a transformers tokenizer."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.train_from_iterator(read_sst2_sentences(3000), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        model_max_length=128,
    )
    fast.save_pretrained(directory)
    return str(directory)


def make_tiny_bert(
    directory: Path, tokenizer_dir: str, num_labels: int = 2, layers: int = 2, hidden: int = 32, seed: int = 0
) -> str:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=130, num_labels=num_labels,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def word_tokenizer(tmp_path_factory) -> str:
    return make_word_tokenizer(tmp_path_factory.mktemp("word_tok"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, word_tokenizer) -> str:
    """A randomly initialised 2-layer, 32-wide BERT backbone (the teacher to fine-tune)."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), word_tokenizer)


def tiny_run_values(out: Path, teacher: str, **overrides) -> dict:
    """A flat config on a few hundred SST-2 rows that trains in seconds."""
    values = dict(
        train_file=str(SST2 / "train.tsv"),
        validation_file=str(SST2 / "dev.tsv"),
        test_file=str(SST2 / "test.tsv"),
        text_column="sentence",
        max_train_samples=400,
        max_eval_samples=200,
        max_length=64,
        teacher_model=teacher,
        teacher_epochs=3,
        teacher_learning_rate=1e-3,
        student_num_layers=1,
        output_dir=str(out),
        num_train_epochs=2,
        learning_rate=1e-3,
        per_device_train_batch_size=32,
        logging_steps=5,
        save_strategy="no",
        speed_batches=2,
        seed=0,
        use_cpu=True,
    )
    values.update(overrides)
    return values
