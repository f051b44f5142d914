"""`kdistill export` and `kdistill predict` on a tiny run: ONNX fp32 and int8, parity, the card, the errors.

Nothing here times anything: the speed report runs with one batch and one round, and only its keys are checked.
"""

import json
import logging
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import kdistill
from kdistill import export
from kdistill.cli import main
from conftest import make_tiny_bert, one_error_line, read_sst2_rows, tiny_run_values

TEXTS = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés from start to finish",
         "bad"]


def _onnx_logits(path, tokenizer, texts: list[str], max_length: int = 64, batch_size: int = 64) -> np.ndarray:
    """An ONNX model's logits on `texts`, run here as kdistill runs it: shortest rows first, 64 to a batch padded to
    its longest, on as many threads as torch has. The batches matter: dynamic int8 quantisation scales each batch by
    its own range, so other batches give other int8 logits."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    lengths = [len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    out = np.empty((len(texts), 2), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in chunk], truncation=True, max_length=max_length, padding=True,
                        return_tensors="np")
        out[chunk] = session.run(None, {n: enc[n].astype(np.int64) for n in names})[0]
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, word_tokenizer):
    """A finished tiny run: a given (untrained) 64-wide teacher, a 1-layer student trained on hard labels, eval.json."""
    out = tmp_path_factory.mktemp("run")
    teacher = make_tiny_bert(tmp_path_factory.mktemp("teacher"), word_tokenizer, hidden=64)
    config = kdistill.make_config(tiny_run_values(
        out, teacher, teacher_train=False, strategy="hard", max_train_samples=200, max_eval_samples=120,
        num_train_epochs=1, speed_batches=0, report_to="none",
    ))
    kdistill.teach(config)
    kdistill.distill(config)
    kdistill.evaluate(config)
    return out


@pytest.fixture(scope="module")
def exported(run_dir):
    """The run exported with every option: int8, the teacher, and a (one-batch, untimed-by-tests) speed report."""
    code = main(["export", str(run_dir), "--format", "onnx", "--int8", "--teacher",
                 "--speed_batches", "1", "--speed_rounds", "1"])
    assert code == 0
    out = run_dir / "export"
    return out, json.loads((out / "export_report.json").read_text())


def test_export_writes_the_deployment_directory(exported):
    out, report = exported
    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json", "labels.json", "README.md", "export_report.json",
                 "teacher/model.onnx", "teacher/model.int8.onnx", "teacher/tokenizer.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "labels.json").read_text()) == {"0": 0, "1": 1}
    # The word-level test tokenizer makes no token_type_ids, so the graph takes none.
    assert report["inputs"] == ["input_ids", "attention_mask"]
    assert report["command"].startswith("kdistill export ") and "--int8" in report["command"]
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]  # no temp files left behind


def test_onnx_graph_has_dynamic_batch_and_sequence_and_matches_pytorch(exported, run_dir):
    out, _ = exported
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for tensor in session.get_inputs():
        assert all(isinstance(d, str) for d in tensor.shape), (tensor.name, tensor.shape)  # symbolic, not fixed
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "student").eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    # Batch sizes and lengths other than the export example's (2 rows): one row, then three padded rows.
    for texts in (TEXTS[:1], TEXTS):
        enc = tokenizer(texts, padding=True, return_tensors="np")
        onnx_logits = session.run(None, {i.name: enc[i.name] for i in session.get_inputs()})[0]
        with torch.no_grad():
            torch_logits = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
        assert onnx_logits.shape == (len(texts), 2)
        np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4, rtol=0)


def test_attention_is_one_opset_23_node_and_int8_quantises_the_projections_around_it(exported):
    import onnx

    out, _ = exported
    fp32, int8 = onnx.load(out / "model.onnx"), onnx.load(out / "model.int8.onnx")
    assert {o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx")} == {export.OPSET}
    fp32_ops = [n.op_type for n in fp32.graph.node]
    int8_ops = [n.op_type for n in int8.graph.node]
    assert fp32_ops.count("Attention") == 1 and "Softmax" not in fp32_ops  # the 1-layer student: one fused node
    # The standard Attention node is left as it is (not rewritten into a com.microsoft QAttention, which would not
    # load), and the weight MatMuls around it are quantised.
    assert int8_ops.count("Attention") == 1 and "QAttention" not in int8_ops
    assert "MatMulInteger" in int8_ops or "DynamicQuantizeMatMul" in int8_ops
    ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])


def test_parity_and_int8_fidelity_are_reported(exported):
    out, report = exported
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-4
    assert report["eval"]["rows"] == 120  # the run's max_eval_samples
    assert report["teacher_parity"]["max_abs_diff"] <= 1e-4
    i8 = report["int8"]
    # The int8 fidelity recomputed here from both ONNX models' logits on the same 120 test rows.
    texts, labels = read_sst2_rows("test", 120)
    tokenizer = AutoTokenizer.from_pretrained(out)
    fp32 = _onnx_logits(out / "model.onnx", tokenizer, texts)
    int8 = _onnx_logits(out / "model.int8.onnx", tokenizer, texts)
    differ = fp32.argmax(-1) != int8.argmax(-1)
    assert i8["agreement_with_fp32"] == pytest.approx(1 - differ.mean(), abs=1e-9)
    assert i8["agreement_met"] == (i8["agreement_with_fp32"] >= 0.995)
    assert i8["accuracy_fp32"] == pytest.approx((fp32.argmax(-1) == labels).mean(), abs=1e-9)
    assert i8["accuracy_int8"] == pytest.approx((int8.argmax(-1) == labels).mean(), abs=1e-9)
    assert i8["accuracy_change_points"] == pytest.approx(100 * (i8["accuracy_int8"] - i8["accuracy_fp32"]))
    assert i8["max_abs_logit_diff"] == pytest.approx(float(np.abs(fp32 - int8).max()), abs=1e-6)
    probs = np.sort(_softmax(fp32), axis=-1)
    margins = probs[:, -1] - probs[:, -2]  # fp32's top-1 minus top-2 probability
    largest = float(margins[differ].max()) if differ.any() else 0.0
    flips = i8["flips"]
    assert flips["rows"] == 120 and flips["disagreements"] == int(differ.sum())
    assert flips["disagreements"] == round((1 - i8["agreement_with_fp32"]) * 120)
    assert flips["largest_margin"] == pytest.approx(largest, abs=1e-6)
    assert flips["rows_within"] == (int((margins <= largest).sum()) if differ.any() else 0)
    assert os.path.getsize(out / "model.int8.onnx") < os.path.getsize(out / "model.onnx")
    assert report["summary"]["int8_over_fp32_file_ratio"] == pytest.approx(
        os.path.getsize(out / "model.onnx") / os.path.getsize(out / "model.int8.onnx"))


def test_int8_fidelity_counts_the_flips_and_how_close_fp32_was_to_a_tie():
    # The tiny run's int8 model flips no row (its one-epoch student scores 0.517 on the 120 rows, the share of label 1
    # there, as if it always answered 1), so the flips are checked here on made-up logits: rows 1 and 3 flip (and
    # would not if the rows were paired in another order).
    fp32 = torch.tensor([[3.0, 0.0], [0.2, 0.0], [0.0, 1.0], [0.0, 0.4], [2.0, 0.0]])
    int8 = torch.tensor([[3.0, 0.0], [0.0, 0.2], [0.0, 1.0], [0.4, 0.0], [2.0, 0.0]])
    i8 = export.int8_fidelity(fp32, int8, torch.tensor([0, 0, 1, 1, 0]))
    assert i8["agreement_with_fp32"] == pytest.approx(0.6) and i8["agreement_met"] is False
    assert (i8["accuracy_fp32"], i8["accuracy_int8"]) == pytest.approx((1.0, 0.6))
    assert i8["accuracy_change_points"] == pytest.approx(-40.0)
    assert i8["max_abs_logit_diff"] == pytest.approx(0.4)
    # With two classes the margin p1 - p2 is tanh(|z1 - z2| / 2): 0.905, 0.100, 0.462, 0.197 and 0.762 here. The
    # flipped rows' largest is row 3's; rows 1 and 3 are that close to a tie, the others are not.
    assert i8["flips"] == {"rows": 5, "disagreements": 2, "largest_margin": pytest.approx(np.tanh(0.2)),
                           "rows_within": 2}


def test_speed_report_has_every_model_and_the_ratios(exported):
    _, report = exported
    models = report["speed"]["models"]
    assert set(models) == {f"{w} {r}" for w in ("teacher", "student") for r in ("PyTorch", "ONNX fp32", "ONNX int8")}
    for timing in models.values():
        assert {"latency_ms_b1", "latency_ms_b1_p95", "throughput_b64"} <= set(timing)
    assert report["speed"]["threads"] == torch.get_num_threads()
    for key in ("int8_over_fp32_latency_speedup", "int8_over_fp32_throughput_speedup", "student_over_teacher_throughput_speedup",
                "int8_accuracy_change_points", "int8_fp32_agreement", "fp32_max_abs_diff"):
        assert key in report["summary"], key
    for timing in models.values():  # one value per round, the median of which is the headline
        assert len(timing["latency_ms_b1_rounds"]) == len(timing["throughput_b64_rounds"]) == report["speed"]["rounds"]
        assert timing["latency_ms_b1"] == sorted(timing["latency_ms_b1_rounds"])[len(timing["latency_ms_b1_rounds"]) // 2]
    # The int8 speed-up is fp32's median latency over int8's; its range, the same ratio round by round (here one
    # round, so the range is that one ratio twice).
    fp32, int8 = models["student ONNX fp32"], models["student ONNX int8"]
    summary = report["summary"]
    assert summary["int8_over_fp32_latency_speedup"] == pytest.approx(fp32["latency_ms_b1"] / int8["latency_ms_b1"])
    ratios = [a / b for a, b in zip(fp32["latency_ms_b1_rounds"], int8["latency_ms_b1_rounds"])]
    assert summary["int8_over_fp32_latency_speedup_range"] == pytest.approx([min(ratios), max(ratios)])


def test_a_ratio_is_given_round_by_round():
    from kdistill.report.model_card import round_ratio_range, spread

    # fp32 latencies over three rounds against int8's: ratios 2.0, 1.5 and 1.2
    assert round_ratio_range([2.0, 3.0, 1.2], [1.0, 2.0, 1.0]) == pytest.approx([1.2, 2.0])
    assert spread({"x_range": [1.2, 2.0]}, "x") == " (1.20x to 2.00x round by round)"
    assert spread({}, "x") == ""  # a report from before per-round timings
    with pytest.raises(ValueError, match="same number of rounds"):
        round_ratio_range([1.0, 2.0], [1.0])


def test_model_card_lists_metrics_fidelity_and_the_command(exported, run_dir):
    out, report = exported
    card = (out / "README.md").read_text()
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert f"| accuracy | {evaluation['student']['accuracy']:.4f} | {evaluation['teacher']['accuracy']:.4f} |" in card
    for text in ("macro-F1", "agreement with teacher", "strategy `hard`", "temperature 2.0", "alpha 0.5",
                 "fp32 parity", "int8 vs fp32", "Published anchors", "dynamic_quantization_bert_tutorial",
                 report["command"], "| student | ONNX int8 |"):
        assert text in card, text


def test_predict_gives_the_same_answer_from_pytorch_and_onnx(exported, run_dir, capsys):
    out, _ = exported
    answers = {}
    for name, argv in {"run dir (PyTorch)": [str(run_dir)], "student dir (PyTorch)": [str(run_dir / "student")],
                       "export (ONNX fp32)": [str(out)], "export (ONNX int8)": [str(out), "--int8"]}.items():
        assert main(["predict", *argv, *TEXTS, "--json"]) == 0
        answers[name] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    reference = answers["run dir (PyTorch)"]
    assert [a["text"] for a in reference] == TEXTS
    for row in reference:
        assert set(row["probabilities"]) == {"0", "1"} and sum(row["probabilities"].values()) == pytest.approx(1.0)
    # The reference is the student's softmax, computed here one unpadded text at a time.
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "student").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "student")
    with torch.no_grad():
        probs = [torch.softmax(model(**tokenizer(t, truncation=True, max_length=64, return_tensors="pt")).logits[0], -1)
                 for t in TEXTS]
    for row, p in zip(reference, probs):
        assert row["label"] == str(int(p.argmax())) and row["probabilities"]["1"] == pytest.approx(float(p[1]), abs=1e-5)
    for name in ("student dir (PyTorch)", "export (ONNX fp32)"):
        assert [a["label"] for a in answers[name]] == [a["label"] for a in reference], name
        for a, b in zip(answers[name], reference):
            assert a["probabilities"]["1"] == pytest.approx(b["probabilities"]["1"], abs=1e-5)
    # int8: the int8 model's own answers, recomputed here by a session of its own on the batches predict makes (int8
    # differs from fp32 by design, and dynamic int8 scales each batch by its own range: other batches, other logits).
    from kdistill.deploy.runtime import ExportedModel

    session = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    int8 = np.zeros((len(TEXTS), 2))
    for chunk, feed in ExportedModel.load(str(out), int8=True).batches(TEXTS):
        int8[chunk] = session.run(None, feed)[0]
    int8 = _softmax(int8)
    for a, p in zip(answers["export (ONNX int8)"], int8):
        assert a["label"] == str(int(p.argmax())) and a["probabilities"]["1"] == pytest.approx(float(p[1]), abs=1e-5)


def test_predict_reads_a_file_and_prints_a_line_per_text(exported, tmp_path, capsys):
    out, _ = exported
    texts = tmp_path / "texts.txt"
    texts.write_text(TEXTS[0] + "\n\n" + TEXTS[1] + "\n")
    assert main(["predict", str(out), "--file", str(texts)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # The blank line is skipped; each line is label, probabilities and text, the answers given for the same texts on
    # the command line.
    assert main(["predict", str(out), *TEXTS[:2], "--json"]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [f"{a['label']}\tp(0)={a['probabilities']['0']:.4f} p(1)={a['probabilities']['1']:.4f}\t{a['text']}"
                     for a in expected]
    assert [a["text"] for a in expected] == TEXTS[:2]


def test_predict_reads_a_latin1_file_with_encoding_and_names_an_empty_one(exported, tmp_path, capsys):
    out, _ = exported
    latin = tmp_path / "latin.txt"
    latin.write_bytes("un film très réussi\n".encode("latin-1"))
    assert main(["predict", str(out), "--file", str(latin)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kdistill: error: {latin}: not valid utf-8 text (line 1, byte 10: invalid continuation byte); give its encoding "
        "with --encoding (e.g. --encoding latin-1)")
    assert main(["predict", str(out), "--file", str(latin), "--encoding", "latin-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "un film très réussi"
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    assert main(["predict", str(out), "--file", str(blank)]) == 2
    assert capsys.readouterr().err.strip() == f"kdistill: error: predict: {blank} holds no text (only blank lines)"


def test_failed_parity_exits_1_and_says_so(run_dir, tmp_path, monkeypatch, capsys, caplog):
    # No real export misses 1e-4, so the bound is made impossible to meet.
    monkeypatch.setattr(export.onnx, "PARITY_BOUND", -1.0)  # where check_parity reads it
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.int8.onnx").write_text("from an earlier export")
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(out), "--speed_batches", "0"]) == 1
    assert "FAILED, bound -1)" in capsys.readouterr().out  # the bound the check used, not another module's copy
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "PARITY FAILED: ONNX logits differ from PyTorch's by more than -1 (see export_report.json)"]
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] is False and "FAILED" in (out / "README.md").read_text()
    assert not (out / "model.int8.onnx").exists()  # this export has no --int8: a stale int8 model must not stay


def test_unknown_format_and_missing_model_fail_with_one_line(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--format", "tflite"]) == 2
    assert "argument --format: invalid choice: 'tflite'" in one_error_line(capsys)
    assert main(["predict", str(tmp_path), "some text"]) == 2
    assert "no model here" in one_error_line(capsys)
    assert main(["predict", str(run_dir), "some text", "--int8"]) == 2
    assert "no model.int8.onnx" in one_error_line(capsys)
