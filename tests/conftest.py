"""Shared fixtures: real SST-2 rows from ../shared/data and tiny BERTs built from a config, all offline; the CLI
helpers and the finished tiny run that the error, reliability, student and run-directory tests share."""

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from kdistill.cli import main
from kdistill.config import SECTIONS

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


def make_word_tokenizer(directory: Path, vocab_size: int = 2000, lowercase_pieces: bool = False,
                        wordpiece: bool = False) -> str:
    """A word-level tokenizer trained on SST-2 sentences, saved as a transformers tokenizer (`wordpiece`: a
    WordPiece one, whose rare words split into ##pieces, as BERT's do)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    if wordpiece:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    else:
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=specials)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
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
    directory: Path, tokenizer_dir: str, num_labels: int = 2, layers: int = 2, hidden: int = 32, seed: int = 0,
    model_class: type = BertForSequenceClassification,
) -> str:
    """A random BERT classifier (`model_class`: sequence by default, BertForTokenClassification for taggers) from a
    small config, saved with `tokenizer_dir`'s tokenizer."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=130, num_labels=num_labels,
    )
    torch.manual_seed(seed)
    model_class(config).save_pretrained(directory)
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


# --- the CLI as a user meets it (test_errors, test_reliability, test_students, test_rundir, test_export) ----------


def write_config(path: Path, values: dict) -> str:
    """A sectioned YAML file from a flat {field: value} dict."""
    doc = {}
    for section, cls in SECTIONS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        part = {k: v for k, v in values.items() if k in names}
        if part:
            doc[section] = part
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return str(path)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_user_error(code: int, err: str, fragment: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert lines[-1].startswith("kdistill: error: "), err
    assert fragment in lines[-1]
    assert code == 2


def one_line_error(capfd, caplog, *argv: str) -> str:
    """Run the CLI in-process; assert exit 2, one line on stderr (the file descriptor: progress bars and library
    handlers included) and no warning or error logged by anyone; return that line."""
    code, err = run_cli(capfd, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert_user_error(code, err, "")
    # The soft-label diagnostics' warnings speak of the data (a random tiny teacher's labels are nearly uniform), not
    # of the failure; anything else logged at WARNING or above is noise on an error path.
    noisy = [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR", "CRITICAL")
             and not r.getMessage().startswith("the teacher's soft labels on ")]
    assert not noisy, noisy
    return lines[0]


def one_error_line(capsys) -> str:
    """The one line on stderr (what capsys caught since it was last read), which must be a kdistill error."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("kdistill: error: ")
    return err[0]


def snapshot(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under `directory`, by relative path."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def tsv(path: Path, rows: list[str], header: str = "sentence\tlabel") -> str:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def values(tmp_path, tiny_bert) -> dict:
    """A tiny run whose teacher is a ready BERT classifier (no teaching)."""
    return tiny_run_values(
        tmp_path / "run", tiny_bert, teacher_train=False, max_train_samples=64, max_eval_samples=32,
        num_train_epochs=1, speed_batches=0,
    )


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_bert) -> tuple[Path, dict]:
    """A complete soft-label `kdistill run` (soft labels, student, eval.json) to copy: tests change the copy
    (`run_copy`), never this."""
    out = tmp_path_factory.mktemp("finished") / "run"
    values = tiny_run_values(
        out, tiny_bert, teacher_train=False, max_train_samples=64, max_eval_samples=32, num_train_epochs=1,
        speed_batches=0, strategy="soft",
    )
    assert main(["run", "--config", write_config(out.parent / "run.yaml", values)]) == 0
    assert (out / "eval.json").is_file()
    return out, values


@pytest.fixture
def run_copy(finished_run, tmp_path) -> tuple[Path, dict]:
    out, values = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    return copy, {**values, "output_dir": str(copy)}


# --- a run with checkpoints (test_reliability, test_rundir) ---------------------------------------------------------


def checkpoint_values(tmp_path: Path, tiny_bert: str, out: Path) -> dict:
    """16 steps of 8 rows (64 rows, 2 epochs), a checkpoint every 5 steps (all kept), dropout on: RNG state matters."""
    return tiny_run_values(
        out, tiny_bert, teacher_train=False, max_train_samples=64, max_eval_samples=32, num_train_epochs=2,
        per_device_train_batch_size=8, save_strategy="steps", save_steps=5, logging_steps=1, speed_batches=0,
        strategy="mixed", soft_label_cache=str(tmp_path / "cache"), save_total_limit=None,
    )


@pytest.fixture(scope="session")
def reference(tmp_path_factory, tiny_bert) -> tuple[Path, dict]:
    """An uninterrupted run: the result a killed and resumed run must reproduce (test_reliability), with its
    checkpoints (test_rundir poisons one). Made on one thread, as the child processes test_reliability compares it
    with bit for bit run (see one_thread_like_the_children there), whichever file asks for it first."""
    tmp = tmp_path_factory.mktemp("reference")
    values = checkpoint_values(tmp, tiny_bert, tmp / "run")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["distill", "--config", write_config(tmp / "c.yaml", values)]) == 0
    finally:
        torch.set_num_threads(before)
    return tmp / "run", values


# --- a malicious pickle (test_reliability, test_rundir) -------------------------------------------------------------


class Payload:
    """Unpickling this creates `marker`: what a malicious pickle would do with anything it likes."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def seeded_randn(*shape, seed: int = 0, std: float = 3.0) -> torch.Tensor:
    """Random logits of a given shape, the same for the same seed (loss-term tests)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * std
