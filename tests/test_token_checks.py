"""Issues 15 and 19: what a token-classification run can get wrong is found by `validate.check_run`, before any
model loads or the teacher trains, and said in one line with exit 2, leaving no output_dir: a tag in the
evaluation data that the training data lacks, a teacher fine-tuned for the other kind of classification, and a
BiLSTM student given teacher layers to copy."""

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForTokenClassification, BertModel, PreTrainedTokenizerFast

from conftest import one_line_error, tsv, write_config
from kdistill.config import make_config
from kdistill.validate import check_run

from test_token_classification import CONLL, TAGS

TRAIN = "EU NNP B-ORG\nrejects VBZ O\n\nPeter NNP B-PER\nBlackburn NNP I-PER\n\nBonn NNP B-LOC\n"
ROWS = ["a fine film\t1", "a dull film\t0", "a bright film\t1", "a grey film\t0"]


def conll(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def token_values(tmp_path: Path, **kw) -> dict:
    """A token_classification run on tiny CoNLL files whose teacher is a hub name: were it loaded, the (offline)
    hub would fail with a message of its own."""
    values = dict(task="token_classification", train_file=conll(tmp_path / "train.txt", TRAIN),
                  validation_file=conll(tmp_path / "dev.txt", "Bonn NNP B-LOC\n"), text_column="tokens",
                  label_column="tags", teacher_model="bert-base-cased", output_dir=str(tmp_path / "run"),
                  use_cpu=True)
    values.update(kw)
    return values


def refused(capfd, caplog, tmp_path: Path, values: dict, command: str = "teach") -> str:
    """The one error line (exit 2) of `kdistill COMMAND --config ...`, which must leave no output_dir."""
    line = one_line_error(capfd, caplog, command, "--config", write_config(tmp_path / "c.yaml", values))
    assert not (tmp_path / "run").exists()
    return line


# --- (a) a tag the training data lacks ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["teach", "distill", "eval", "run"])
def test_an_evaluation_tag_the_training_data_lacks_is_named_before_anything_loads(capfd, caplog, tmp_path, command):
    test = conll(tmp_path / "test.txt", "EU NNP B-ORG\nvisits VBZ O\nParis NNP B-GPE\nwith IN O\nMary NNP B-PERSON\n")
    values = token_values(tmp_path, test_file=test)
    assert refused(capfd, caplog, tmp_path, values, command) == (
        f"kdistill: error: {test}: tag(s) 'B-GPE', 'B-PERSON' do not occur in the training data "
        f"({tmp_path / 'train.txt'}), so the model has no such label; fix the tags, or train on data that has them")


def test_the_rows_max_train_samples_keeps_are_the_training_data(capfd, caplog, tmp_path):
    # B-PER is in train.txt's second sentence, which max_train_samples: 1 leaves out; the validation file has it.
    dev = conll(tmp_path / "dev_per.txt", "Peter NNP B-PER\n")
    values = token_values(tmp_path, validation_file=dev, max_train_samples=1)
    assert refused(capfd, caplog, tmp_path, values) == (
        f"kdistill: error: {dev}: tag(s) 'B-PER' do not occur in the training data (1 of the 3 sentences in "
        f"{tmp_path / 'train.txt'}, as max_train_samples keeps), so the model has no such label; fix the tags, "
        "or train on data that has them")
    # max_eval_samples likewise: the evaluation rows the run reads are what must be known.
    dev = conll(tmp_path / "dev2.txt", "Paris NNP B-LOC\n\nMary NNP B-PERSON\n")
    check_run(make_config(token_values(tmp_path, validation_file=dev, max_eval_samples=1)))


def test_real_conll_splits_pass(tmp_path):
    check_run(make_config(token_values(tmp_path, train_file=str(CONLL / "train.txt"),
                                       validation_file=str(CONLL / "dev.txt"), test_file=str(CONLL / "test.txt"),
                                       max_train_samples=200, max_eval_samples=100)))


# --- (b) a teacher fine-tuned for the other kind of classification -------------------------------------------------


def test_a_sequence_classifier_teacher_for_tokens_is_refused(capfd, caplog, tmp_path, tiny_bert):
    values = token_values(tmp_path, teacher_model=tiny_bert, teacher_train=False)
    assert refused(capfd, caplog, tmp_path, values) == (
        f"kdistill: error: teacher: {tiny_bert} is a BertForSequenceClassification (fine-tuned for sequence "
        "classification) but the task token_classification needs a teacher fine-tuned for token classification (a "
        "...ForTokenClassification); give one, or set teacher_train: true to fine-tune this one with a new head")
    # Fine-tuning it (teacher_train: true) takes its encoder and gives it a token head: nothing to refuse.
    check_run(make_config(token_values(tmp_path, teacher_model=tiny_bert, teacher_train=True)))


def token_teacher(directory: Path, tokenizer_dir: str, cls=BertForTokenClassification) -> str:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=130, num_labels=len(TAGS))
    torch.manual_seed(0)
    cls(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_a_token_classifier_teacher_for_sequences_is_refused(capfd, caplog, tmp_path, values, word_tokenizer):
    teacher = token_teacher(tmp_path / "tagger", word_tokenizer)
    train = tsv(tmp_path / "train.tsv", ROWS)
    values = {**values, "teacher_model": teacher, "train_file": train, "validation_file": train, "test_file": None}
    assert refused(capfd, caplog, tmp_path, values) == (
        f"kdistill: error: teacher: {teacher} is a BertForTokenClassification (fine-tuned for token classification) "
        "but the task sequence_classification needs a teacher fine-tuned for sequence classification (a "
        "...ForSequenceClassification); give one, or set teacher_train: true to fine-tune this one with a new head")


def test_a_bare_encoder_teacher_is_left_to_its_loader(tmp_path, word_tokenizer):
    teacher = token_teacher(tmp_path / "encoder", word_tokenizer, cls=BertModel)
    check_run(make_config(token_values(tmp_path, teacher_model=teacher, teacher_train=False, student_num_layers=1)))


# --- (c) a BiLSTM student with teacher layers -----------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [("student_num_layers", 2), ("student_layers", [0, 1])])
def test_a_bilstm_student_takes_no_teacher_layers(capfd, caplog, tmp_path, field, value):
    values = token_values(tmp_path, student_init="bilstm", **{field: value})
    assert refused(capfd, caplog, tmp_path, values, "distill") == (
        f"kdistill: error: student: {field} picks the teacher layers a from_teacher student copies; a bilstm "
        f"student has no teacher layers: unset {field}")
