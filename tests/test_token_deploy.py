"""Token classification beyond training (issue 15's compare / export / predict): the ONNX export of a tagger
(per-token logits, parity over real positions, int8 agreement per word), torch-free prediction of entities with
character spans (kdistill.deploy.runtime), `kdistill serve` answering entities, and a `kdistill compare` sweep judged
on entity F1.

One tiny run (a 2-layer 32-wide BERT teacher trained for a few epochs on 120 real CoNLL-2003 sentences, a 1-layer
student) serves every test here. Nothing here times anything.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from kdistill import pipeline
from kdistill.cli import main
from kdistill.config import make_config
from kdistill.evaluation import evaluate
from kdistill.tasks.token import align

from test_token_classification import CONLL, TAGS, make_tiny_token_bert, make_wordpiece_tokenizer

SRC = str(Path(__file__).resolve().parents[1] / "src")
SENTENCE = "EU rejects German call to boycott British lamb ."


def _values(out: Path, teacher: str, **kw) -> dict:
    values = dict(
        task="token_classification", train_file=str(CONLL / "train.txt"), validation_file=str(CONLL / "dev.txt"),
        test_file=str(CONLL / "test.txt"), text_column="tokens", label_column="tags", max_train_samples=120,
        max_eval_samples=40, max_length=64, teacher_model=teacher, teacher_epochs=3, teacher_learning_rate=3e-3,
        teacher_batch_size=16, student_init="from_config", student_config_overrides=json.dumps({"num_hidden_layers": 1}),
        output_dir=str(out), num_train_epochs=2, learning_rate=3e-3, per_device_train_batch_size=16,
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
