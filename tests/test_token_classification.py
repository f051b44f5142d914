"""Token classification (issue 15, first slice): reading CoNLL and JSON Lines, aligning word tags with sub-tokens,
per-word soft labels in the ragged cache, per-word losses, and a tiny end-to-end run on 200 CoNLL-2003 sentences."""

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import BertForTokenClassification, PreTrainedTokenizerFast

from kdistill import pipeline
from kdistill.config import make_config
from kdistill.data import build_label_map, load_table
from kdistill.errors import UserError
from kdistill.evaluation import evaluate
from kdistill.losses import hard_ce, soft_kl
from kdistill.soft_labels import read_cache, write_cache
from kdistill.tasks import get_task
from kdistill.tasks.token import TokenCollator, align, encode_tags, word_logits

from conftest import SHARED, make_tiny_bert

CONLL = SHARED / "conll2003"
TAGS = ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O"]


def read_sentences(n: int) -> list[list[str]]:
    """The words of train.txt's first `n` sentences, read without kdistill."""
    out, words = [], []
    with open(CONLL / "train.txt", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                if words:
                    out.append(words)
                    if len(out) == n:
                        break
                words = []
            else:
                words.append(line.split()[0])
    return out


def make_wordpiece_tokenizer(directory, vocab_size: int = 200) -> str:
    """A small WordPiece tokenizer (most words split into several pieces), saved as a transformers tokenizer."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.train_from_iterator([" ".join(s) for s in read_sentences(2000)], trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_max_length=128)
    fast.save_pretrained(directory)
    return str(directory)


def make_tiny_token_bert(directory, tokenizer_dir: str, num_labels: int = len(TAGS), layers: int = 2,
                         hidden: int = 32, seed: int = 0) -> str:
    """A random BertForTokenClassification from a small config (conftest's make_tiny_bert with a tagging head)."""
    return make_tiny_bert(directory, tokenizer_dir, num_labels, layers, hidden, seed,
                          model_class=BertForTokenClassification)


@pytest.fixture(scope="module")
def pieces(tmp_path_factory) -> str:
    return make_wordpiece_tokenizer(tmp_path_factory.mktemp("wordpiece"))


def data_config(path: str, **kw):
    return make_config(task="token_classification", train_file=str(path), text_column="tokens", label_column="tags",
                       **kw).data


# --- data ----------------------------------------------------------------------------------------------------------


def test_conll_reader_skips_docstart_and_reads_iob1_as_iob2(tmp_path, caplog):
    path = tmp_path / "iob1.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP I-ORG\nrejects VBZ O\nGerman JJ I-MISC\n\n\n"
                    "Peter NNP I-PER\nBlackburn NNP I-PER\nSmith NNP B-PER\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="kdistill.conll"):
        table = load_table(str(path), data_config(path))
    assert table["tokens"][:] == [["EU", "rejects", "German"], ["Peter", "Blackburn", "Smith"]]
    # IOB1: an entity begins with I- unless it follows one of its type, where B- splits the two.
    assert table["tags"][:] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER", "B-PER"]]
    assert f"{path}: 3 entity tag(s) began with I- (IOB1); read as B- (IOB2)" in caplog.messages


def test_conll_tag_column_is_configurable(tmp_path):
    path = tmp_path / "four.conll"
    path.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n", encoding="utf-8")
    table = load_table(str(path), data_config(path, column_names=["tokens", "pos", "chunk", "tags"]))
    assert table["tags"][:] == [["B-ORG", "O"]]
    # The default is the last column; naming the chunk column reads the chunk tags.
    table = load_table(str(path), data_config(path, column_names=["tokens", "pos", "tags", "ner"]))
    assert table["tags"][:] == [["B-NP", "B-VP"]]


@pytest.mark.parametrize("text, message", [
    ("EU NNP B-ORG\nrejects\n", "{path}:2: 1 column(s) 'rejects'; a line needs 2 (a token and a tag), separated "
                                "by spaces"),
    ("EU NNP B-ORG\n\nPeter NNP X-PER\n", "{path}:3: tag 'X-PER' is not an IOB tag (O, B-TYPE or I-TYPE, e.g. B-PER)"),
    ("EU NNP S-ORG\n", "{path}:1: tag 'S-ORG' is not an IOB tag (O, B-TYPE or I-TYPE, e.g. B-PER)"),
    ("-DOCSTART- -X- O\n\n\n", "{path}: the file holds no sentences (one token a line, a blank line between "
                               "sentences)"),
])
def test_bad_conll_lines_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_table(str(path), data_config(path))
    assert str(err.value) == message.format(path=path)


def test_jsonl_rows_and_their_errors(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps({"tokens": ["EU", "rejects"], "tags": ["I-ORG", "O"]}) + "\n", encoding="utf-8")
    assert load_table(str(path), data_config(path))["tags"][:] == [["B-ORG", "O"]]
    cases = [({"tokens": [], "tags": []}, "row 2: an empty sentence or an empty token; remove it or fix the file"),
             ({"tokens": ["a", "b"], "tags": ["O"]}, "row 2: 2 tokens but 1 tags; give one tag per token"),
             ({"tokens": ["a"], "tags": ["E-PER"]}, "row 2: tag 'E-PER' is not an IOB tag")]
    for i, (row, message) in enumerate(cases):
        bad = tmp_path / f"bad{i}.jsonl"
        bad.write_text(json.dumps({"tokens": ["EU"], "tags": ["B-ORG"]}) + "\n" + json.dumps(row) + "\n",
                       encoding="utf-8")
        with pytest.raises(UserError, match="^" + str(bad) + ": " + message.replace("(", r"\(").replace(")", r"\)")):
            load_table(str(bad), data_config(bad))


def test_one_label_map_over_the_words_tags():
    table = load_table(str(CONLL / "dev.txt"), data_config(CONLL / "dev.txt"))
    task = get_task("token_classification")
    assert build_label_map(task.label_values(table, data_config(CONLL / "dev.txt"))) == \
        {t: i for i, t in enumerate(TAGS)}
    with pytest.raises(UserError, match=r"^dev: tag\(s\) 'B-XYZ' are not among the model's labels \(B-LOC"):
        encode_tags([["O", "B-XYZ"]], {t: i for i, t in enumerate(TAGS)}, "dev")


# --- alignment -----------------------------------------------------------------------------------------------------


def test_a_words_label_sits_on_its_first_piece(pieces):
    tok = PreTrainedTokenizerFast.from_pretrained(pieces)
    words = [["Blackburn", "EU", "Peter"]]
    label2id = {t: i for i, t in enumerate(TAGS)}
    tags = encode_tags([["B-PER", "B-ORG", "B-PER"]], label2id, "t")
    enc, word_ids, labels, items, lost, cut = align(words, tok, 64, tags)
    first_word_pieces = word_ids[0].count(0)
    assert first_word_pieces >= 3, tok.convert_ids_to_tokens(enc["input_ids"][0])  # "Blackburn" is many pieces
    assert word_ids[0][0] == -1 and word_ids[0][-1] == -1  # [CLS], [SEP]
    expected = []
    for p, w in enumerate(word_ids[0]):
        first = w >= 0 and (p == 0 or word_ids[0][p - 1] != w)
        expected.append(tags[0][w] if first else -100)
    assert labels[0] == expected
    assert [lab for lab in labels[0] if lab != -100] == [label2id["B-PER"], label2id["B-ORG"], label2id["B-PER"]]
    assert sum(items[0]) == 3 and (lost, cut) == (0, 0)
    # label_all_tokens: every piece of Blackburn is labelled, its continuations as I-PER.
    _, _, all_labels, all_items, _, _ = align(words, tok, 64, tags, label_all_tokens=True, inside=tags.inside)
    blackburn = [lab for lab, w in zip(all_labels[0], word_ids[0]) if w == 0]
    assert blackburn == [label2id["B-PER"]] + [label2id["I-PER"]] * (first_word_pieces - 1)
    assert sum(all_items[0]) == len([w for w in word_ids[0] if w >= 0])


def test_truncation_warns_once_with_the_count_of_words_lost(pieces, caplog):
    tok = PreTrainedTokenizerFast.from_pretrained(pieces)
    sentence = read_sentences(40)
    long = max(sentence, key=len)
    _, word_ids, _, _, lost, cut = align([long], tok, 16)
    kept = len({w for w in word_ids[0] if w >= 0})
    assert cut == 1 and lost == len(long) - kept > 0
    task = get_task("token_classification")
    config = data_config(CONLL / "train.txt", max_length=16)
    from datasets import Dataset

    table = Dataset.from_dict({"tokens": [long, ["EU"]], "tags": [["O"] * len(long), ["B-ORG"]]})
    labels = task.encode_labels(table, config, {t: i for i, t in enumerate(TAGS)}, "x")
    with caplog.at_level(logging.WARNING, logger="kdistill.tasks.token"):
        task.prepare(table, tok, config, labels, source="long.txt")
        task.prepare(table, tok, config, labels, source="long.txt")  # the student and evaluation tokenise it again
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"long.txt: {lost} of {len(long) + 1} words lost their labels (tokenizer): 1 sentence(s) "
                        "longer than max_length=16 tokens were cut"]
    # Evaluation scores every word (a cut one as untagged); the soft-label diagnostics score the teacher on the words
    # its pass caches a vector for: the kept ones.
    prepared = task.prepare(table, tok, config, labels, source="long.txt")
    assert [len(x) for x in task.item_labels(prepared)] == [len(long), 1]
    seen = task.seen_item_labels(prepared)
    assert [len(x) for x in seen] == [kept, 1] and seen[1].tolist() == [TAGS.index("B-ORG")]


# --- soft labels per word ------------------------------------------------------------------------------------------


def test_ragged_cache_round_trip_of_words_by_tags(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(n, len(TAGS), generator=g) for n in (9, 2, 1, 30)]
    path = str(tmp_path / "train-abc.safetensors")
    write_cache(path, rows, "fp")
    cache = read_cache(path, "fp")
    assert cache.ragged and (cache.rows, cache.items, cache.classes) == (4, 42, len(TAGS))
    got = cache[torch.tensor([3, 0, 2])]
    assert [tuple(t.shape) for t in got] == [(30, 9), (9, 9), (1, 9)]
    assert all(torch.equal(a, b) for a, b in zip(got, [rows[3], rows[0], rows[2]]))
    assert cache.row_items(1) == 2


def test_word_logits_take_each_words_first_piece():
    logits = torch.arange(6 * 2, dtype=torch.float32).reshape(6, 2)
    # [CLS] w0 w0 w1 w1 [SEP]; a padded tail beyond the row's length is not read
    assert word_logits(logits, [-1, 0, 0, 1, 1, -1]).tolist() == [[2, 3], [6, 7]]
    # word 1 had no sub-token: a zero vector keeps word 2 at its index
    assert word_logits(logits, [-1, 0, 2, 2, -1, -1]).tolist() == [[2, 3], [0, 0], [4, 5]]


def test_per_word_losses_against_hand_computed_values():
    """Two sentences; the teacher's vectors are read by (sentence, word) and placed on the student's first pieces."""
    C, T = 3, 2.0
    g = torch.Generator().manual_seed(1)
    teacher_words = [torch.randn(2, C, generator=g), torch.randn(3, C, generator=g)]

    class Cache:  # a ragged source indexed by sentence
        def __getitem__(self, idx):
            return [teacher_words[i] for i in idx.tolist()]

    features = [  # word_ids: sentence 0 = [CLS] w0 w0 w1 [SEP]; sentence 1 = [CLS] w0 w1 w2 w2 w2 [SEP] (truncated)
        {"input_ids": [2, 5, 6, 7, 3], "word_ids": [-1, 0, 0, 1, -1], "items": [0, 1, 0, 1, 0],
         "labels": [-100, 1, -100, 0, -100], "idx": 0, "length": 5, "word_labels": [1, 0]},
        {"input_ids": [2, 5, 6, 7, 8, 9, 3], "word_ids": [-1, 0, 1, 2, 2, 2, -1], "items": [0, 1, 1, 1, 0, 0, 0],
         "labels": [-100, 2, -100, 1, -100, -100, -100], "idx": 1, "length": 7, "word_labels": [2, -100, 1]},
    ]
    pad = lambda rows: {"input_ids": torch.nn.utils.rnn.pad_sequence(  # noqa: E731
        [torch.tensor(r["input_ids"]) for r in rows], batch_first=True)}
    batch = TokenCollator(pad, Cache())(features)
    mask = batch["item_mask"]
    assert mask.tolist() == [[False, True, False, True, False, False, False],
                             [False, True, True, True, False, False, False]]
    assert torch.equal(batch["teacher_logits"][0, 3], teacher_words[0][1])
    assert torch.equal(batch["teacher_logits"][1, 3], teacher_words[1][2])
    student = torch.randn(2, 7, C, generator=g)
    # By hand: items (0,1) (0,3) (1,1) (1,2) (1,3); labelled: all but (1,2).
    items = [(0, 1, 0), (0, 3, 1), (1, 1, 0), (1, 2, 1), (1, 3, 2)]
    labels = {(0, 1): 1, (0, 3): 0, (1, 1): 2, (1, 3): 1}
    ce = sum(-F.log_softmax(student[b, p], -1)[y] for (b, p), y in labels.items())
    kl = 0.0
    for b, p, w in items:
        pt = F.softmax(teacher_words[b][w] / T, -1)
        kl += (pt * (pt.log() - F.log_softmax(student[b, p] / T, -1))).sum() * T * T
    num_items = int(mask.sum())  # what the trainer passes: the batch's items
    assert num_items == 5
    assert hard_ce(student, batch["labels"], mask=mask, num_items=num_items).item() == pytest.approx(ce.item() / 5, rel=1e-5)
    assert hard_ce(student, batch["labels"], mask=mask).item() == pytest.approx(ce.item() / 4, rel=1e-5)
    assert soft_kl(student, batch["teacher_logits"], T, mask=mask, num_items=num_items).item() == \
        pytest.approx(kl.item() / 5, rel=1e-5)


# --- end to end ----------------------------------------------------------------------------------------------------


def _values(tmp_path, teacher: str, **kw) -> dict:
    values = dict(
        task="token_classification", train_file=str(CONLL / "train.txt"), validation_file=str(CONLL / "dev.txt"),
        test_file=str(CONLL / "test.txt"), text_column="tokens", label_column="tags", max_train_samples=200,
        max_eval_samples=100, max_length=128, teacher_model=teacher, teacher_epochs=4, teacher_learning_rate=3e-3,
        teacher_batch_size=16, student_init="from_config", student_config_overrides=json.dumps({"num_hidden_layers": 1}),
        output_dir=str(tmp_path / "run"), num_train_epochs=3, learning_rate=3e-3, per_device_train_batch_size=16,
        logging_steps=4, save_strategy="no", speed_batches=2, seed=0, use_cpu=True, temperature=2.0,
    )
    values.update(kw)
    return values


def test_end_to_end_teacher_soft_labels_students_and_metrics(tmp_path, pieces, monkeypatch):
    backbone = make_tiny_token_bert(tmp_path / "backbone", pieces)
    teach = pipeline.teach(make_config(_values(tmp_path, backbone)))
    assert teach["loss_curve"][-1][1] < teach["loss_curve"][0][1]
    results = {}
    for i, strategy in enumerate(("soft", "hard", "mixed")):
        config = make_config(_values(tmp_path, backbone, strategy=strategy,
                                     output_dir=str(tmp_path / "run"), overwrite=True))
        if i == 1:
            # The soft labels are on disk now: a student needs no teacher to train from them.
            def no_teacher(*a, **k):
                raise AssertionError("the teacher was loaded")

            monkeypatch.setattr(pipeline, "load_teacher", no_teacher)
        out = pipeline.distill(config)
        curve = [loss for _, loss in out["loss_curve"]]
        assert curve[-1] < curve[0], (strategy, curve)
        results[strategy] = out
        monkeypatch.undo()
    assert set(results["mixed"]["objective"]) == {"soft_kl", "hard_ce"}
    caches = list((tmp_path / "run" / "soft_labels").glob("train-*.safetensors"))
    assert len(caches) == 1
    from safetensors import safe_open

    with safe_open(str(caches[0]), "pt") as fh:
        meta = fh.metadata()
        offsets = fh.get_tensor("offsets")
    assert meta["ragged"] == "true" and int(meta["rows"]) == 200 and int(meta["classes"]) == len(TAGS)
    # Per sentence, one vector per word up to the last word the teacher's 128 pieces reached.
    _, word_ids, _, _, _, _ = align(read_sentences(200), PreTrainedTokenizerFast.from_pretrained(pieces), 128)
    assert (offsets[1:] - offsets[:-1]).tolist() == [max(ids) + 1 for ids in word_ids]
    result = evaluate(make_config(_values(tmp_path, backbone, strategy="mixed", output_dir=str(tmp_path / "run"))))
    written = json.loads((tmp_path / "run" / "eval.json").read_text())
    for who in ("student", "teacher"):
        for key in ("f1", "precision", "recall", "per_type", "accuracy", "ece", "words", "words_unseen", "parameters",
                    "size_bytes", "latency_ms_b1", "throughput_b64"):
            assert key in written[who], (who, key)
        assert 0.0 <= written[who]["f1"] <= 1.0
    for key in ("agreement", "kl_to_teacher", "epsilon"):
        assert key in written["student"]
    assert set(written["student"]["per_type"]) <= {"LOC", "MISC", "ORG", "PER"}
    assert result["rows"] == 100 and written["student"]["words"] > 1000
    assert written["teacher"]["accuracy"] > 0.5  # a trained tagger beats chance on 9 tags (most words are O)
