"""The BiLSTM student (Tang et al. 2019): its own tokenizer, padding-independent logits, its size, and
`student_init: bilstm` distilled end to end from a tiny BERT through the same pipeline as any student."""

import dataclasses
import json

import pytest
import torch
from transformers import AutoTokenizer

import kdistill
from kdistill.cli import main
from kdistill.config import ConfigError
from kdistill.models.bilstm import BiLSTMConfig, BiLSTMForSequenceClassification, make_student, word_tokenizer
from kdistill.students import vocabulary_texts
from conftest import read_sst2_sentences, tiny_run_values


def test_default_student_has_tang_et_al_s_size():
    model = BiLSTMForSequenceClassification(BiLSTMConfig(vocab_size=10000, num_labels=2))
    # embeddings 10000 x 128; two LSTM directions of 4 gates x 150 x (128 + 150) weights and 2 x 4 x 150 biases;
    # the 300 -> 200 ReLU layer; the 200 -> 2 head: 1.68M, under Tang et al.'s 2M.
    expected = 10000 * 128 + 2 * (4 * 150 * (128 + 150) + 2 * 4 * 150) + (300 * 200 + 200) + (200 * 2 + 2)
    assert sum(p.numel() for p in model.parameters()) == expected == 1_676_602


def test_logits_do_not_depend_on_the_padding_of_the_batch():
    tok = word_tokenizer(read_sst2_sentences(500), vocab_size=500)
    torch.manual_seed(0)
    model = BiLSTMForSequenceClassification(BiLSTMConfig(vocab_size=len(tok), num_labels=2, pad_token_id=tok.pad_token_id)).eval()
    short, long = "a fine film", "a long , slow and entirely forgettable film about nothing much at all"
    alone = model(**tok([short], return_tensors="pt")).logits
    batch = tok([short, long], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # the short row is padded
    assert torch.allclose(model(**batch).logits[0], alone[0], atol=1e-6)


def test_tokenizer_keeps_the_mask_token_whole_and_maps_rare_words_to_unk():
    tok = word_tokenizer(["good film", "good movie", "bad film"], vocab_size=5)  # 3 special + the 2 commonest
    assert tok.convert_ids_to_tokens(tok("[MASK] Good movie")["input_ids"]) == ["[MASK]", "good", "[UNK]"]
    assert "token_type_ids" not in tok("good")


def test_make_student_is_a_function_of_its_seed_and_leaves_the_global_random_state_alone():
    texts = read_sst2_sentences(300)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = make_student(texts, {"0": 0, "1": 1}, vocab_size=300, seed=0, embedding_dim=8, hidden_size=8)
    assert torch.rand(1) == before  # building the student drew nothing from the global generator
    b, _ = make_student(texts, {"0": 0, "1": 1}, vocab_size=300, seed=0, embedding_dim=8, hidden_size=8)
    c, _ = make_student(texts, {"0": 0, "1": 1}, vocab_size=300, seed=1, embedding_dim=8, hidden_size=8)
    assert torch.equal(a.lstm.weight_ih_l0, b.lstm.weight_ih_l0)
    assert not torch.equal(a.lstm.weight_ih_l0, c.lstm.weight_ih_l0)


def test_bilstm_fields_are_checked_when_the_config_is_built():
    with pytest.raises(ConfigError, match="bilstm_vocab_size must be at least 4"):
        kdistill.make_config(train_file="t.tsv", student_init="bilstm", bilstm_vocab_size=3)
    with pytest.raises(ConfigError, match=r"bilstm_dropout must be in \[0, 1\), got 1.0"):
        kdistill.make_config(train_file="t.tsv", student_init="bilstm", bilstm_dropout=1.0)
    with pytest.raises(ConfigError, match="unset student_model and student_tokenizer"):
        kdistill.make_config(train_file="t.tsv", student_init="bilstm", student_model="some/dir")


def test_the_removed_bilstm_verb_says_what_replaces_it(capsys):
    assert main(["bilstm", "--train_file", "x", "--out", "y"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdistill: error: `kdistill bilstm` is gone: ")
    assert "student_init: bilstm" in err[0]


def test_bilstm_student_distils_from_a_tiny_bert_end_to_end(tmp_path, tiny_bert):
    config = kdistill.make_config(tiny_run_values(
        tmp_path / "run", tiny_bert, student_init="bilstm", bilstm_vocab_size=2000, bilstm_embedding_dim=32,
        bilstm_hidden_size=32, student_num_layers=None, strategy="soft", temperature=2.0, learning_rate=3e-3))
    kdistill.teach(config)
    result = kdistill.distill(config)
    curve = [loss for _, loss in result["loss_curve"]]
    assert curve[-1] < curve[0]
    held_out = kdistill.evaluate(config)
    # embeddings 2000 x 32; two LSTM directions of 4 gates x 32 x (32 + 32) weights and 2 x 32 biases each; the
    # 64 -> 200 ReLU layer; the 200 -> 2 head.
    assert held_out["student"]["parameters"] == 2000 * 32 + 2 * (4 * 32 * 64 + 2 * 4 * 32) + (64 * 200 + 200) + (200 * 2 + 2)
    saved = json.loads((tmp_path / "run" / "student" / "config.json").read_text())
    assert saved["model_type"] == "kdistill_bilstm" and saved["vocab_size"] == 2000
    # The vocabulary is the 2,000 commonest words of the whole training file (as `kdistill bilstm` made it), not of
    # the 400 rows this run trains on.
    texts = vocabulary_texts(config.data)
    assert len(texts) > 10 * config.data.max_train_samples
    everything = word_tokenizer(texts, vocab_size=2000)
    assert AutoTokenizer.from_pretrained(tmp_path / "run" / "student").get_vocab() == everything.get_vocab()
    # Distillation moved the student towards its teacher on held-out rows: the same BiLSTM before training (same
    # texts, sizes and bilstm_seed, so the run's starting point) is further from the teacher (measured 2026-12-01: KL
    # 0.0066 before, 0.0002 after; agreement 0.0 before, 1.0 after, the tiny teacher answering one class throughout).
    initial, tokenizer = make_student(texts, {"0": 0, "1": 1}, 2000, seed=0, embedding_dim=32, hidden_size=32)
    initial.save_pretrained(tmp_path / "initial" / "student")
    tokenizer.save_pretrained(tmp_path / "initial" / "student")
    before = kdistill.evaluate(dataclasses.replace(
        config, teacher=dataclasses.replace(config.teacher, teacher_train=False, teacher_model=str(tmp_path / "run" / "teacher")),
        distill=dataclasses.replace(config.distill, output_dir=str(tmp_path / "initial"))))
    assert held_out["student"]["kl_to_teacher"] < before["student"]["kl_to_teacher"]
    assert held_out["student"]["agreement"] > before["student"]["agreement"]
