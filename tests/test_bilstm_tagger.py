"""The word-level BiLSTM tagger (`student_init: bilstm` for token_classification; TextBrewer's BiGRU row is the
anchor): one token per word from its own vocabulary, per-word logits, and a student whose tokenizer is not the
teacher's reading the teacher's per-word soft labels from the ragged cache, end to end on 200 CoNLL sentences."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForTokenClassification, AutoTokenizer, PreTrainedTokenizerFast

from kdistill import pipeline
from kdistill.config import make_config
from kdistill.evaluation import evaluate
from kdistill.models.bilstm import BiLSTMConfig, BiLSTMForTokenClassification, make_student, tag_tokenizer
from kdistill.soft_labels import read_cache
from kdistill.students import vocabulary_texts
from kdistill.tasks.token import align

from test_token_classification import TAGS, _values, make_tiny_token_bert, make_wordpiece_tokenizer, read_sentences

LABEL2ID = {t: i for i, t in enumerate(TAGS)}
BILSTM = dict(student_init="bilstm", student_config_overrides=None, bilstm_vocab_size=2000, bilstm_embedding_dim=32,
              bilstm_hidden_size=32, bilstm_classifier_size=32)


@pytest.fixture(scope="module")
def pieces(tmp_path_factory) -> str:
    return make_wordpiece_tokenizer(tmp_path_factory.mktemp("wordpiece"))


def test_one_token_per_word_cased_and_never_split():
    # 3 special tokens + the 3 commonest words: EU (2), rejects (2), then of the 1s "U.S." before "call" (ties in
    # alphabetical order, capitals first).
    tok = tag_tokenizer([["EU", "rejects", "U.S.", "call"], ["EU", "rejects"]], vocab_size=6)
    assert sorted(tok.get_vocab()) == ["EU", "U.S.", "[MASK]", "[PAD]", "[UNK]", "rejects"]
    enc = tok([["EU", "U.S.", "eu", "call", "[MASK]"]], is_split_into_words=True)
    # "U.S." stays whole (the sequence tokenizer splits it at its dots); case is kept, so "eu" is not "EU".
    assert tok.convert_ids_to_tokens(enc["input_ids"][0]) == ["EU", "U.S.", "[UNK]", "[UNK]", "[MASK]"]
    assert enc.word_ids(0) == [0, 1, 2, 3, 4]  # no [CLS]/[SEP]: every word is its own first sub-token


def test_tagger_logits_per_word_and_independent_of_padding():
    sentences = read_sentences(300)
    model, tok = make_student(sentences, LABEL2ID, vocab_size=500, seed=0, tagger=True, embedding_dim=16,
                              hidden_size=16, classifier_size=16)
    assert isinstance(model, BiLSTMForTokenClassification) and len(tok) == 500
    model.eval()
    short, long = sentences[1], max(sentences, key=len)
    batch = tok([short, long], is_split_into_words=True, padding=True, return_tensors="pt")
    logits = model(**batch).logits
    assert tuple(logits.shape) == (2, len(long), len(TAGS))
    alone = model(**tok([short], is_split_into_words=True, return_tensors="pt")).logits
    assert tuple(alone.shape) == (1, len(short), len(TAGS))
    assert torch.allclose(logits[0, : len(short)], alone[0], atol=1e-6)


def test_the_vocabulary_comes_from_the_training_sentences_words(tmp_path):
    config = make_config(_values(tmp_path, "unused", **BILSTM))
    sentences = vocabulary_texts(config.data)
    assert sentences[:2] == read_sentences(2)  # lists of words, not strings
    assert len(sentences) > 10 * config.data.max_train_samples  # every sentence of train.txt


def test_bilstm_students_distil_from_a_bert_taggers_cache_end_to_end(tmp_path, pieces, monkeypatch):
    teacher = make_tiny_token_bert(tmp_path / "backbone", pieces)
    values = _values(tmp_path, teacher, **BILSTM, num_train_epochs=4, logging_steps=2)
    config = make_config(values)
    pipeline.teach(config)
    pipeline.make_soft_labels(config)  # the teacher's per-word logits, with its WordPiece tokenizer, on disk

    def no_teacher(*a, **k):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(pipeline, "load_teacher", no_teacher)
    soft = pipeline.distill(make_config({**values, "strategy": "soft", "overwrite": True}))
    curve = [loss for _, loss in soft["loss_curve"]]
    assert curve[-1] < curve[0], curve
    monkeypatch.undo()

    # The student's tokenizer is not the teacher's: one token per word, where the teacher has many pieces.
    student_dir = tmp_path / "run" / "student"
    student_tok = AutoTokenizer.from_pretrained(student_dir)
    sentences = read_sentences(200)
    _, teacher_word_ids, _, _, _, _ = align(sentences, PreTrainedTokenizerFast.from_pretrained(pieces), 128)
    assert sum(len(ids) for ids in teacher_word_ids) > 1.5 * sum(len(s) for s in sentences)
    # Each word's teacher vector from the cache lands on that word's (only) token of the student.
    caches = list((tmp_path / "run" / "soft_labels").glob("train-*.safetensors"))
    assert len(caches) == 1
    with safe_open(str(caches[0]), "pt") as fh:
        cache = read_cache(str(caches[0]), fh.metadata()["fingerprint"])
    task = pipeline.task_of(config)
    rows = pipeline.prepare_split(config, "train", student_tok, LABEL2ID)
    batch = task.collator(student_tok, cache)([rows[i] for i in range(8)])
    stored = cache[torch.arange(8)]
    for b in range(8):
        seen = stored[b].ne(0).any(-1)
        assert torch.equal(batch["teacher_logits"][b, : len(stored[b])][seen], stored[b][seen])
        assert torch.equal(batch["item_mask"][b, : len(seen)], seen)
        assert int(batch["item_mask"][b].sum()) == int(seen.sum()) > 0

    # Its saved model loads as a tagger and gives one vector of tag logits per word.
    model = AutoModelForTokenClassification.from_pretrained(student_dir).eval()
    assert isinstance(model, BiLSTMForTokenClassification) and isinstance(model.config, BiLSTMConfig)
    inputs = student_tok(sentences[:3], is_split_into_words=True, padding=True, return_tensors="pt")
    assert tuple(model(**inputs).logits.shape) == (3, max(len(s) for s in sentences[:3]), len(TAGS))

    result = evaluate(make_config({**values, "strategy": "soft"}))
    written = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0.0 <= written["student"]["f1"] <= 1.0 and "per_type" in written["student"]
    assert written["student"]["words"] == result["student"]["words"] > 1000

    hard = pipeline.distill(make_config({**values, "strategy": "hard", "overwrite": True}))
    curve = [loss for _, loss in hard["loss_curve"]]
    assert curve[-1] < curve[0], curve
    assert set(hard["objective"]) == {"hard_ce"} and set(soft["objective"]) == {"soft_kl"}

    # `kdistill predict` on the run: each word tagged by the BiLSTM (one token per word, so every word has a tag).
    from kdistill.export import load_predictor

    texts = [" ".join(s) for s in sentences[:5]]
    got = load_predictor(str(tmp_path / "run")).tag(texts)
    with torch.no_grad():
        inputs = student_tok(sentences[:5], is_split_into_words=True, padding=True, return_tensors="pt")
        best = model(**inputs).logits.argmax(-1)
    for i, (sentence, prediction) in enumerate(zip(sentences[:5], got)):
        assert prediction["tags"] == [TAGS[int(t)] for t in best[i, : len(sentence)]]
        assert prediction["truncated_words"] == 0
        for e in prediction["entities"]:
            assert texts[i][e["start"]:e["end"]] == e["text"]
