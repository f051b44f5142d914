"""Token classification beyond training (issue 15's compare / export / predict): the ONNX export of a tagger
(per-token logits, parity over real positions, int8 agreement per word), torch-free prediction of entities with
character spans (kdistill.deploy.runtime), `kdistill serve` answering entities, and a `kdistill compare` sweep judged
on entity F1.

One tiny run (a 2-layer 32-wide BERT teacher trained for a few epochs on 200 real CoNLL-2003 sentences, a 1-layer
student) serves every test here. Nothing here times anything.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from kdistill import pipeline
from kdistill.cli import main
from kdistill.config import make_config
from kdistill.deploy.runtime import ExportedModel, decode_entities, format_prediction, split_words, tag_words
from kdistill.errors import UserError
from kdistill.evaluation import evaluate
from kdistill.tasks.token import align, word_logits

from test_deploy import _request, start_server
from test_token_classification import CONLL, TAGS, make_tiny_token_bert, make_wordpiece_tokenizer

SRC = str(Path(__file__).resolve().parents[1] / "src")
SENTENCE = "EU rejects German call to boycott British lamb ."


def _values(out: Path, teacher: str, **kw) -> dict:
    values = dict(
        task="token_classification", train_file=str(CONLL / "train.txt"), validation_file=str(CONLL / "dev.txt"),
        test_file=str(CONLL / "test.txt"), text_column="tokens", label_column="tags", max_train_samples=200,
        max_eval_samples=40, max_length=64, teacher_model=teacher, teacher_epochs=8, teacher_learning_rate=3e-3,
        teacher_batch_size=16, student_init="from_config", student_config_overrides=json.dumps({"num_hidden_layers": 1}),
        output_dir=str(out), num_train_epochs=6, learning_rate=3e-3, per_device_train_batch_size=16,
        logging_steps=4, save_strategy="no", speed_batches=0, seed=0, use_cpu=True, temperature=2.0,
        strategy="soft", report_to="none",
    )
    values.update(kw)
    return values


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    pieces = make_wordpiece_tokenizer(tmp_path_factory.mktemp("wordpiece"))
    return make_tiny_token_bert(tmp_path_factory.mktemp("backbone"), pieces)


@pytest.fixture(scope="module")
def token_run(tmp_path_factory, backbone) -> Path:
    """A finished tiny token-classification run: teacher, per-word soft labels, a soft-label student, eval.json."""
    out = tmp_path_factory.mktemp("token_run") / "run"
    config = make_config(_values(out, backbone))
    pipeline.teach(config)
    pipeline.distill(config)
    evaluate(config)
    return out


@pytest.fixture(scope="module")
def token_export(token_run) -> tuple[Path, dict]:
    assert main(["export", str(token_run), "--format", "onnx", "--int8", "--speed_batches", "0"]) == 0
    out = token_run / "export"
    return out, json.loads((out / "export_report.json").read_text())


# --- export --------------------------------------------------------------------------------------------------------


def test_token_export_writes_per_token_logits_with_dynamic_axes_and_passes_parity(token_export, token_run):
    out, report = token_export
    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json", "labels.json", "README.md"):
        assert (out / name).is_file(), name
    assert json.loads((out / "labels.json").read_text()) == {t: i for i, t in enumerate(TAGS)}
    assert report["task"] == "token_classification" and report["words"] == "whitespace"
    assert report["output_axes"] == ["batch", "sequence", "labels"]
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-4
    assert report["eval"]["rows"] == 40 and report["eval"]["item"] == "word"
    # int8 is judged per word: the words of the 40 test sentences that have a sub-token within 64 pieces (this small
    # WordPiece vocabulary splits words finely, so some sentences are cut).
    tokenizer = AutoTokenizer.from_pretrained(out)
    _, word_ids, _, _, lost, _ = align(_test_sentences(40), tokenizer, 64)
    words = sum(len({w for w in ids if w >= 0}) for ids in word_ids)
    assert lost > 0 and report["eval"]["items"] == words == sum(len(s) for s in _test_sentences(40)) - lost
    assert report["int8"]["flips"]["rows"] == words
    card = (out / "README.md").read_text()
    assert "| entity F1 (seqeval, strict IOB2) |" in card and "macro-F1" not in card
    assert "accuracy on these words" in card
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (output,) = session.get_outputs()
    assert isinstance(output.shape[0], str) and isinstance(output.shape[1], str) and output.shape[2] == len(TAGS)
    # Other batch sizes and lengths than the export's example: one sentence, then three padded ones.
    model = AutoModelForTokenClassification.from_pretrained(token_run / "student").eval()
    for sentences in (_test_sentences(1), _test_sentences(3)):
        enc = tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="np")
        got = session.run(None, {i.name: enc[i.name] for i in session.get_inputs()})[0]
        with torch.no_grad():
            want = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
        assert got.shape == (len(sentences), enc["input_ids"].shape[1], len(TAGS))
        real = enc["attention_mask"].astype(bool)
        np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


def _test_sentences(n: int) -> list[list[str]]:
    from kdistill.conll import read_conll

    return read_conll(str(CONLL / "test.txt"))["tokens"][:n]


# --- torch-free prediction -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tags, entities", [
    (["B-ORG", "O", "B-MISC", "O", "O"], [("ORG", 0, 1), ("MISC", 2, 3)]),
    (["B-PER", "I-PER", "I-PER", "O"], [("PER", 0, 3)]),
    (["I-PER", "I-PER", "O", "I-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),  # I- without B- starts an entity
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 1), ("PER", 1, 3)]),  # adjacent entities of one type stay two
    (["B-LOC", "I-ORG", "I-ORG"], [("LOC", 0, 1), ("ORG", 1, 3)]),  # a change of type ends the entity
    (["B-LOC", None, "I-LOC"], [("LOC", 0, 1), ("LOC", 2, 3)]),  # an untagged word ends it too
    (["O", "O"], []),
    ([], []),
])
def test_iob2_tags_decode_into_entities(tags, entities):
    assert decode_entities(tags) == entities


def test_tag_words_gives_character_spans_of_the_original_text_and_counts_cut_words():
    text = "  Peter  Blackburn\tof the European  Union ."
    spans = split_words(text)
    assert [text[a:b] for a, b in spans] == text.split()
    labels = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"]
    # [CLS] Peter Black ##burn of the European Union [SEP]: the last word (".") was cut at max_length.
    word_ids = [None, 0, 1, 1, 2, 3, 4, 5, None]
    chosen = [0, 1, 2, 4, 0, 0, 3, 4, 0]  # ##burn's own logits (4) must not count: a word's tag is its first piece's
    logits = np.full((len(word_ids), len(labels)), -4.0, dtype=np.float32)
    logits[np.arange(len(word_ids)), chosen] = 4.0
    got = tag_words(text, spans, word_ids, logits, labels)
    assert got["tags"] == ["B-PER", "I-PER", "O", "O", "B-ORG", "I-ORG", None]
    assert got["truncated_words"] == 1
    p = float(np.exp(4.0) / (np.exp(4.0) + 4 * np.exp(-4.0)))
    assert got["entities"] == [
        {"type": "PER", "text": "Peter  Blackburn", "start": 2, "end": 18, "score": pytest.approx(p)},
        {"type": "ORG", "text": "European  Union", "start": 26, "end": 41, "score": pytest.approx(p)},
    ]
    for e in got["entities"]:
        assert text[e["start"]:e["end"]] == e["text"]
    assert format_prediction(got) == ("Peter  Blackburn [PER 2:18]  European  Union [ORG 26:41]  "
                                      "(1 word past max_length, untagged)")
    assert format_prediction({"entities": [], "tags": ["O"], "truncated_words": 0}) == "(no entities)"


def _pytorch_tags(export_dir: Path, run: Path, texts: list[str], max_length: int = 64) -> list[dict]:
    """The PyTorch student's prediction, the way training reads a sentence: words split at whitespace, encoded with
    is_split_into_words, each word's argmax at its first sub-token (kdistill.tasks.token.word_logits)."""
    model = AutoModelForTokenClassification.from_pretrained(run / "student").eval()
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    out = []
    for text in texts:
        words = text.split()
        enc = tokenizer([words], is_split_into_words=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0]
        ids = [-1 if w is None else w for w in enc.word_ids(0)]
        per_word = word_logits(logits, ids)
        tags = [labels[int(i)] for i in per_word.argmax(-1)] + [None] * (len(words) - len(per_word))
        probs = per_word.softmax(-1).max(-1).values.tolist()
        spans = split_words(text)
        entities = [{"type": k, "start": spans[a][0], "end": spans[b - 1][1], "score": sum(probs[a:b]) / (b - a)}
                    for k, a, b in decode_entities(tags)]
        out.append({"tags": tags, "entities": entities, "truncated_words": len(words) - len(per_word)})
    return out


def _texts() -> list[str]:
    """A hand-made sentence with odd spacing, the issue's example, a long one (cut at 64 pieces), and real test
    sentences (where a little-trained tagger does find entities)."""
    return ["  Peter Blackburn ,  of the European Commission ,  said\tin Brussels on Thursday .", SENTENCE,
            " ".join(["Germany"] * 70), *(" ".join(s) for s in _test_sentences(12))]


def test_torch_free_predict_matches_the_pytorch_student_word_by_word(token_export, token_run):
    out, _ = token_export
    texts = _texts()
    model = ExportedModel.load(str(out))
    got, want = model.predict(texts), _pytorch_tags(out, token_run, texts)
    assert [g["tags"] for g in got] == [w["tags"] for w in want]
    assert [g["truncated_words"] for g in got] == [w["truncated_words"] for w in want]
    assert got[2]["truncated_words"] > 0 and got[1]["truncated_words"] == 0
    found = 0
    for text, g, w in zip(texts, got, want):
        assert [(e["type"], e["start"], e["end"]) for e in g["entities"]] == \
            [(e["type"], e["start"], e["end"]) for e in w["entities"]]
        for e, we in zip(g["entities"], w["entities"]):
            assert text[e["start"]:e["end"]] == e["text"]
            assert e["score"] == pytest.approx(we["score"], abs=1e-4)
        found += len(g["entities"])
    assert found > 0  # the spans above were checked on real entities
    # Length-sorted batches of 3 answer as one batch of all: padding changes nothing.
    small = model.predict(texts, batch_size=3)
    assert [s["tags"] for s in small] == [g["tags"] for g in got]
    per_text = model.logits(texts[:2])
    assert [len(r) for r in per_text] == [len(model.tokenizer.encode(t.split(), is_pretokenized=True).ids)
                                          for t in texts[:2]]


def test_predict_prints_entities_with_spans_and_json(token_export, capsys):
    out, _ = token_export
    model = ExportedModel.load(str(out))
    texts = _texts()[:4]
    assert main(["predict", str(out), *texts]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{format_prediction(p)}\t{t}" for p, t in zip(model.predict(texts), texts)]
    assert main(["predict", str(out), "--json", SENTENCE]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    got = json.loads(line)
    assert set(got) == {"text", "entities", "tags", "truncated_words"} and got["text"] == SENTENCE
    assert len(got["tags"]) == len(SENTENCE.split())
    assert got == {"text": SENTENCE, **json.loads(json.dumps(model.predict([SENTENCE])[0]))}


def test_predict_and_serve_on_a_token_export_never_import_torch_or_transformers(token_export):
    out, _ = token_export
    code = f"""
import sys
from kdistill.cli import main
assert main(["predict", {str(out)!r}, {SENTENCE!r}, "--json"]) == 0
assert main(["predict", {str(out)!r}, {SENTENCE!r}, "--int8"]) == 0
from kdistill.deploy.runtime import ExportedModel
from kdistill.deploy.server import ServeConfig, create_app
create_app(ExportedModel.load({str(out)!r}), ServeConfig())
heavy = sorted(m for m in ("torch", "transformers", "datasets", "sklearn") if m in sys.modules)
print("HEAVY", heavy)
"""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    first = json.loads(lines[0])
    assert first["text"] == SENTENCE and len(first["tags"]) == 9 and "entities" in first
    assert lines[1].endswith("\t" + SENTENCE)
    assert lines[-1] == "HEAVY []"


def test_serve_answers_entities_for_a_token_export(token_export):
    out, _ = token_export
    url, proc = start_server(out)
    try:
        model = ExportedModel.load(str(out))
        texts = _texts()[:4]
        want = json.loads(json.dumps(model.predict(texts)))
        status, one = _request(url + "/predict", json.dumps({"text": texts[1]}).encode())
        assert status == 200 and one == want[1] and set(one) == {"entities", "tags", "truncated_words"}
        status, many = _request(url + "/predict", json.dumps({"texts": texts}).encode())
        assert status == 200 and many == {"predictions": want}
        status, facts = _request(url + "/model")
        assert status == 200 and facts["task"] == "token_classification" and facts["labels"] == TAGS
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0


# --- compare -------------------------------------------------------------------------------------------------------


def test_a_token_sweep_is_judged_on_entity_f1(tmp_path, token_run, capsys):
    """Hard against soft labels, one seed each, from the tiny run's trained teacher (not trained again)."""
    out = tmp_path / "sweep"
    doc = {
        "data": {"task": "token_classification", "train_file": str(CONLL / "train.txt"),
                 "validation_file": str(CONLL / "dev.txt"), "test_file": str(CONLL / "test.txt"),
                 "text_column": "tokens", "label_column": "tags", "max_train_samples": 200, "max_eval_samples": 40,
                 "max_length": 64},
        "teacher": {"teacher_model": str(token_run / "teacher"), "teacher_train": False},
        "student": {"student_init": "from_config", "student_config_overrides": json.dumps({"num_hidden_layers": 1})},
        "distill": {"output_dir": str(out), "num_train_epochs": 6, "learning_rate": 3e-3,
                    "per_device_train_batch_size": 16, "logging_steps": 4, "save_strategy": "no",
                    "speed_batches": 0, "use_cpu": True},
        "grid": {"strategies": ["hard", "soft"], "temperatures": [2], "seeds": [0]},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["compare", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "f1"
    assert [(c["setting"], c["n"]) for c in results["cells"]] == [("hard", 1), ("soft T=2", 1)]
    for run in results["runs"]:  # entity F1 on test, and on validation from the Trainer's metrics
        assert 0.0 <= run["metrics"]["f1"] <= 1.0 and 0.0 <= run["metrics"]["validation_f1"] <= 1.0
    hard, soft = (r["metrics"]["f1"] for r in results["runs"])
    assert max(hard, soft) > 0  # the students tag some entities right: F1 is measured, not a 0 everywhere
    assert results["teacher"]["f1"] > 0
    (diff,) = results["comparisons"]
    assert diff["metric"] == "f1" and diff["mean"] == pytest.approx(soft - hard)
    assert f"{100 * (soft - hard):+.1f} points" in results["verdict"][0]
    # The diagnostics are per word (the teacher's soft label at each word's first sub-token).
    assert results["diagnostics"]["train"]["1"]["num_classes"] == len(TAGS)
    report = (out / "report.md").read_text()
    assert "test entity F1 % [95% CI]" in report and "test accuracy %" not in report
    assert results["plots"][:2] == ["f1_by_strategy.png", "fidelity_by_strategy.png"]
    for name in results["plots"]:
        assert (out / name).is_file() and f"({name})" in report, name
    (verdict,) = results["verdict"]
    assert "entity F1" in verdict
    assert "test entity F1 % [95% CI]" in printed



def test_the_trainers_metrics_for_a_tagger_add_entity_f1_from_its_tag_names():
    """What a sweep's validation_f1 comes from: the Trainer's per-sub-token predictions, read at the labelled
    (first) sub-tokens, scored by seqeval in strict IOB2 mode."""
    from types import SimpleNamespace

    from kdistill.tasks import get_task

    task = get_task("token_classification")
    names = ["B-PER", "I-PER", "O"]
    model = SimpleNamespace(config=SimpleNamespace(id2label=dict(enumerate(names))))
    # Two sentences of sub-tokens, -100 on special tokens, continuation pieces and padding.
    labels = np.array([[-100, 0, -100, 1, 2, -100], [-100, 2, 0, -100, -100, -100]])
    chosen = np.array([[2, 0, 2, 1, 2, 2], [2, 2, 2, 2, 2, 2]])  # sentence 1 right (B-PER I-PER O), 2 misses B-PER
    logits = np.eye(3, dtype=np.float32)[chosen]
    got = task.trainer_metrics_for(model)(SimpleNamespace(predictions=logits, label_ids=labels))
    # Gold: 2 entities, predicted 1, correct 1: precision 1, recall 0.5, F1 2/3; 4 of the 5 labelled words right.
    assert got["f1"] == pytest.approx(2 / 3)
    assert got["accuracy"] == pytest.approx(4 / 5)
    # A model whose config does not name IOB2 tags gets the accuracy alone.
    plain = SimpleNamespace(config=SimpleNamespace(id2label={0: "LABEL_0", 1: "LABEL_1"}))
    assert set(task.trainer_metrics_for(plain)(SimpleNamespace(predictions=logits[..., :2],
                                                               label_ids=np.minimum(labels, 1)))) == {"accuracy"}



def test_pytorch_predict_of_a_tagger_matches_its_export_word_by_word(token_run, token_export, capsys):
    """A run directory (or its student) predicts entities on PyTorch, reading a text as the export does."""
    from kdistill.export import load_predictor

    out, _ = token_export
    texts = [*_texts(), "", "   "]
    exported = ExportedModel.load(str(out)).predict(texts)
    for where in (token_run, token_run / "student"):
        predictor = load_predictor(str(where))
        assert predictor.tagger and predictor.kind == "pytorch"
        got = predictor.tag(texts, batch_size=4)  # batches cut across texts of different lengths
        assert [g["tags"] for g in got] == [e["tags"] for e in exported]
        assert [g["truncated_words"] for g in got] == [e["truncated_words"] for e in exported]
        for g, e in zip(got, exported):
            assert [(x["type"], x["text"], x["start"], x["end"]) for x in g["entities"]] == \
                [(x["type"], x["text"], x["start"], x["end"]) for x in e["entities"]]
            assert [x["score"] for x in g["entities"]] == pytest.approx([x["score"] for x in e["entities"]], abs=1e-4)
        assert got[-1] == {"entities": [], "tags": [], "truncated_words": 0}
        with pytest.raises(TypeError):
            predictor.predict(texts[:1])
    with pytest.raises(UserError, match="an export of a token_classification model; load it with "
                                        "kdistill.deploy.ExportedModel.load"):
        load_predictor(str(out))  # its Predictor would read one row of logits per text
    found = [e for e in exported if e["entities"]]
    assert found, "the tiny tagger finds no entity in any text: the comparison above shows nothing"
    assert main(["predict", str(token_run), "--json", *texts[3:5]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == texts[3:5]
    assert [line["tags"] for line in lines] == [e["tags"] for e in exported[3:5]]
    assert main(["predict", str(token_run), texts[3]]) == 0
    assert capsys.readouterr().out == f"{format_prediction(exported[3])}\t{texts[3]}\n"


def test_predict_refuses_an_export_whose_report_names_another_task(token_export, tmp_path, capsys):
    from conftest import one_error_line

    out, report = token_export
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    (copy / "export_report.json").write_text(json.dumps({**report, "task": "sequence_classification"}))
    assert main(["predict", str(copy), SENTENCE]) == 2
    assert one_error_line(capsys) == (
        f"kdistill: error: {copy}: the model gives 2-D logits per text, which does not fit the task its export "
        "report names (sequence_classification); re-export the run")
