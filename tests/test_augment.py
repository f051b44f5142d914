"""Augmented transfer sets (Tang et al. 2019): each operation on fixed sentences and seeds."""

import random

import pytest

from kdistill.augment import MASK, AugmentConfig, PosLexicon, augment_sentences, augment_tokens
from conftest import SHARED

LEXICON = PosLexicon.from_pairs([("good", "JJ"), ("bad", "JJ"), ("film", "NN"), ("movie", "NN"), ("a", "DT"),
                                 ("Film", "NN"), ("film", "VB")])
SENTENCE = "a good film , a bad movie".split()


def test_lexicon_takes_each_words_most_frequent_tag_case_blind():
    assert LEXICON.tag("FILM") == "NN"  # NN twice (film, Film), VB once
    assert LEXICON.tag(",") is None
    assert LEXICON.words_by_tag["JJ"] == ["bad", "good"]


def test_masking_only():
    config = AugmentConfig(p_mask=1.0, p_pos=0.0, p_ngram=0.0)
    assert augment_tokens(SENTENCE, random.Random(0), config, LEXICON) == [MASK] * len(SENTENCE)
    config = AugmentConfig(p_mask=0.5, p_pos=0.0, p_ngram=0.0)
    out = augment_tokens(SENTENCE * 50, random.Random(0), config, LEXICON)
    assert set(out) <= set(SENTENCE) | {MASK}
    assert 0.4 < out.count(MASK) / len(out) < 0.6
    assert all(o in (w, MASK) for o, w in zip(out, SENTENCE * 50))  # word order is kept


def test_part_of_speech_replacement_keeps_the_tag_and_leaves_unknown_words():
    config = AugmentConfig(p_mask=0.0, p_pos=1.0, p_ngram=0.0)
    for seed in range(20):
        out = augment_tokens(SENTENCE, random.Random(seed), config, LEXICON)
        assert out[3] == "," and len(out) == len(SENTENCE)
        assert [LEXICON.tag(w) for w in out] == [LEXICON.tag(w) for w in SENTENCE]
    seen = {augment_tokens(SENTENCE, random.Random(s), config, LEXICON)[1] for s in range(20)}
    assert seen == {"good", "bad"}
    # Without a lexicon there is nothing to replace with.
    assert augment_tokens(SENTENCE, random.Random(0), config, None) == SENTENCE


def test_ngram_sampling_keeps_a_contiguous_span_of_at_most_max_n():
    config = AugmentConfig(p_mask=0.0, p_pos=0.0, p_ngram=1.0, max_n=3)
    text = " ".join(SENTENCE)
    lengths = set()
    for seed in range(50):
        out = augment_tokens(SENTENCE, random.Random(seed), config, LEXICON)
        assert 1 <= len(out) <= 3 and f" {' '.join(out)} " in f" {text} "
        lengths.add(len(out))
    assert lengths == {1, 2, 3}


def test_sentences_are_deterministic_new_and_distinct():
    sentences = ["a good film", "a bad movie , really", "film"]
    config = AugmentConfig(per_sentence=4, seed=3)
    first = augment_sentences(sentences, config, LEXICON)
    assert first == augment_sentences(sentences, config, LEXICON)
    assert first != augment_sentences(sentences, AugmentConfig(per_sentence=4, seed=4), LEXICON)
    assert len(first) == len(set(first)) and not set(first) & set(sentences)
    assert len(first) <= 4 * len(sentences)
    assert augment_sentences(sentences, AugmentConfig(per_sentence=0), LEXICON) == []


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="p_mask"):
        AugmentConfig(p_mask=1.5)
    with pytest.raises(ValueError, match="at most 1"):
        AugmentConfig(p_mask=0.6, p_pos=0.6)


def test_lexicon_from_the_conll_2003_file():
    lexicon = PosLexicon.from_conll(str(SHARED / "conll2003" / "train.txt"))
    assert lexicon.tag("the") == "DT" and lexicon.tag("film") == "NN"
    assert lexicon.tag("-DOCSTART-") is None


def test_no_sentence_is_only_masks():
    config = AugmentConfig(p_mask=0.5, p_pos=0.0, p_ngram=1.0, max_n=2, per_sentence=20)
    out = augment_sentences(["a good film indeed", "bad"], config, None)
    assert out and all(set(s.split()) != {MASK} for s in out)


def test_augment_command_writes_a_transfer_file_the_data_loader_reads(tmp_path, capsys):
    from kdistill.cli import main
    from kdistill.config import DataConfig
    from kdistill.data import load_split

    source = tmp_path / "train.tsv"
    source.write_text("sentence\tlabel\na good film\t1\na bad , bad movie\t0\n", encoding="utf-8")
    out = tmp_path / "transfer.tsv"
    assert main(["augment", "--input", str(source), "--output", str(out), "--text_column", "sentence",
                 "--per_sentence", "3", "--seed", "1"]) == 0
    table = load_split(DataConfig(train_file=str(source), transfer_file=str(out), text_column="sentence"), "transfer")
    assert 1 <= len(table) <= 6 and table.column_names == ["sentence"]
    assert main(["augment", "--input", str(source), "--output", str(tmp_path / "x.csv")]) == 2
    assert "must be a .tsv" in capsys.readouterr().err
