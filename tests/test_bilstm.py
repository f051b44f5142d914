"""The BiLSTM student (Tang et al. 2019): its own tokenizer, padding-independent logits, under 2M parameters, and
distilled end to end from a tiny BERT through the same pipeline as any student."""

import json

import torch

import kdistill
from kdistill.models.bilstm import BiLSTMConfig, BiLSTMForSequenceClassification, word_tokenizer
from kdistill.cli import main
from conftest import SST2, read_sst2_sentences, tiny_run_values


def test_default_student_is_under_two_million_parameters():
    model = BiLSTMForSequenceClassification(BiLSTMConfig(vocab_size=10000, num_labels=2))
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


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


def test_bilstm_student_distils_from_a_tiny_bert_end_to_end(tmp_path, tiny_bert):
    student_dir = tmp_path / "bilstm"
    assert main(["bilstm", "--train_file", str(SST2 / "train.tsv"), "--text_column", "sentence",
                 "--out", str(student_dir), "--vocab_size", "2000", "--embedding_dim", "32", "--hidden_size", "32"]) == 0
    config = kdistill.make_config(tiny_run_values(
        tmp_path / "run", tiny_bert, student_init="from_pretrained", student_model=str(student_dir),
        student_num_layers=None, strategy="soft", temperature=2.0, learning_rate=3e-3))
    kdistill.teach(config)
    result = kdistill.distill(config)
    curve = [loss for _, loss in result["loss_curve"]]
    assert curve[-1] < curve[0]
    evaluated = kdistill.evaluate(config)
    # embeddings 2000 x 32; two LSTM directions of 4 gates x 32 x (32 + 32) weights and 2 x 32 biases each; the
    # 64 -> 200 ReLU layer; the 200 -> 2 head.
    assert evaluated["student"]["parameters"] == 2000 * 32 + 2 * (4 * 32 * 64 + 2 * 4 * 32) + (64 * 200 + 200) + (200 * 2 + 2)
    assert 0.0 <= evaluated["student"]["agreement"] <= 1.0
    saved = json.loads((tmp_path / "run" / "student" / "config.json").read_text())
    assert saved["model_type"] == "kdistill_bilstm"
