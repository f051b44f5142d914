"""`kdistill generate` (issue 17): greedy completions from a causal_lm run's student or teacher, batched with left
padding; its one-line errors; and sequence-level KD (Kim & Rush 2016): the teacher's completions written as a
transfer file that a hard-label student run packs and trains on."""

import json

import pytest
import torch

from kdistill import pipeline
from kdistill.cli import main
from kdistill.config import make_config
from kdistill.generate import Decoding, complete, generate, transfer_text
from kdistill.students import load_classifier, load_tokenizer

from conftest import one_error_line
from test_causal_lm import BLOCK, lines, lm, lm_values  # noqa: F401 (lm: the fixture, a tiny GPT-2 and BPE)

# Prompts of different lengths, so a batch is padded (on the left); one a line in a prompts file.
PROMPTS = ["ROMEO:", "First Citizen: We are accounted poor citizens", "All: Speak,", "What say you"]
NEW = 12


@pytest.fixture(scope="module")
def run(lm, tmp_path_factory):
    """A causal_lm run: a teacher trained briefly by `teach`, and a hard-label 1-layer student."""
    root = tmp_path_factory.mktemp("gen")
    config = make_config(lm_values(lm, root / "run", strategy="hard", teacher_epochs=3, num_train_epochs=1))
    pipeline.teach(config)
    trained = pipeline.distill(config)
    return {"root": root, "dir": str(root / "run"), "config": config, "trained": trained}


def _direct(model_dir: str, prompt: str) -> str:
    """Greedy `model.generate` on one prompt, unpadded (the pad token suppressed, as generate does): what a batched,
    left-padded completion must equal."""
    model = load_classifier(model_dir, "model", auto_model="AutoModelForCausalLM").eval()
    tok = load_tokenizer(model_dir, "tokenizer")
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id,
                             suppress_tokens=[tok.pad_token_id])
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_greedy_completions_equal_model_generate(run, lm):
    rows = generate(run["dir"], PROMPTS, Decoding(max_new_tokens=NEW, batch_size=3))
    assert [r["prompt"] for r in rows] == PROMPTS
    student = run["dir"] + "/student"
    assert [r["completion"] for r in rows] == [_direct(student, p) for p in PROMPTS]
    assert all(r["completion"] for r in rows)
    assert generate(run["dir"], PROMPTS, Decoding(max_new_tokens=NEW)) == rows  # greedy: the same every time
    # The untrained GPT-2 (a model directory) completes each prompt differently: the left padding is not ignored
    # by accident of a model that says the same thing whatever it reads.
    untrained = generate(lm["model"], PROMPTS, Decoding(max_new_tokens=NEW, batch_size=4))
    assert [r["completion"] for r in untrained] == [_direct(lm["model"], p) for p in PROMPTS]
    assert len({r["completion"] for r in untrained}) == len(PROMPTS)
    teacher = generate(run["dir"], PROMPTS, Decoding(max_new_tokens=NEW), teacher=True)
    assert [r["completion"] for r in teacher] == [_direct(run["dir"] + "/teacher", p) for p in PROMPTS]


def _beam(model_dir: str, prompt: str, beams: int) -> list[int]:
    """Unpadded beam search on one prompt with `model.generate`: the new token ids."""
    model = load_classifier(model_dir, "model", auto_model="AutoModelForCausalLM").eval()
    tok = load_tokenizer(model_dir, "tokenizer")
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=NEW, do_sample=False, num_beams=beams, early_stopping=True,
                             pad_token_id=tok.pad_token_id, suppress_tokens=[tok.pad_token_id])
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_beam_search_completes_like_model_generate(run, lm):
    """Batched, left-padded beam search equals `model.generate` on each prompt alone, for the run's student and for
    the untrained GPT-2 (whose flat distributions make beams part from greedy decoding)."""
    differs = 0
    for path, model_dir in ((run["dir"], run["dir"] + "/student"), (lm["model"], lm["model"])):
        tok = load_tokenizer(model_dir, "tokenizer")
        beams = generate(path, PROMPTS, Decoding(max_new_tokens=NEW, batch_size=3, num_beams=4))
        greedy = generate(path, PROMPTS, Decoding(max_new_tokens=NEW))
        for prompt, row, plain in zip(PROMPTS, beams, greedy):
            want = _beam(model_dir, prompt, 4)
            assert row["completion"] == tok.decode(want, skip_special_tokens=True)
            differs += row["completion"] != plain["completion"]
    assert differs, "beam search found greedy's completion for every prompt: the comparison shows nothing"


def test_sampling_is_seeded(run):
    model = load_classifier(run["dir"] + "/student", "model", auto_model="AutoModelForCausalLM")
    tok = load_tokenizer(run["dir"] + "/student", "tokenizer")
    sampled = Decoding(max_new_tokens=NEW, do_sample=True, temperature=1.5, seed=3)
    state = torch.random.get_rng_state()
    first = complete(model, tok, PROMPTS, sampled)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator is left as it was
    assert complete(model, tok, PROMPTS, sampled) == first
    assert first != complete(model, tok, PROMPTS, Decoding(max_new_tokens=NEW))
    assert tok.padding_side == "right"  # given back after the left-padded batches


def test_cli_prints_one_json_line_per_prompt(run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[1:]) + "\n\n", encoding="utf-8")  # a blank line is skipped
    assert main(["generate", run["dir"], "--prompts", str(prompts), "--max_new_tokens", str(NEW)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == generate(run["dir"], PROMPTS[1:], Decoding(max_new_tokens=NEW))
    out = tmp_path / "out" / "completions.jsonl"
    assert main(["generate", run["dir"], "--prompts", str(prompts), "--max_new_tokens", str(NEW),
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"3 completions -> {out}\n"
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == printed


def test_cli_errors(run, lm, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ROMEO:\n", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    other = tmp_path / "sst2_run"
    other.mkdir()
    (other / "run_config.json").write_text(json.dumps({"data": {"task": "sequence_classification"}}))
    romeo = len(lm["tokenizer"]("ROMEO:")["input_ids"])
    cases = [
        ([str(tmp_path / "nowhere"), "--prompts", str(prompts)],
         f"generate: {tmp_path / 'nowhere'}: no such directory"),
        ([run["dir"], "--prompts", str(tmp_path / "missing.txt")],
         f"generate: prompts file not found: {tmp_path / 'missing.txt'}"),
        ([run["dir"], "--prompts", str(empty)], f"generate: {empty} holds no prompts (only blank lines)"),
        ([str(other), "--prompts", str(prompts)],
         f"generate: {other} is a sequence_classification run; generate completes text with a language model "
         "(a run with task: causal_lm)"),
        ([run["dir"], "--prompts", str(prompts), "--max_new_tokens", "0"],
         "generate: --max_new_tokens, --batch_size and --num_beams must be at least 1"),
        ([run["dir"], "--prompts", str(prompts), "--num_beams", "3", "--do_sample"],
         "generate: --do_sample draws one completion at random and --num_beams searches for the most likely one; "
         "give one of them"),
        ([run["dir"], "--prompts", str(prompts), "--max_new_tokens", "200"],
         f"generate: a prompt of {romeo} tokens and --max_new_tokens 200 pass the model's 128 positions; shorten "
         "the prompts or lower --max_new_tokens"),
    ]
    for argv, message in cases:
        assert main(["generate", *argv]) == 2
        assert one_error_line(capsys) == f"kdistill: error: {message}"


def test_teacher_transfer_file_trains_a_hard_student(run, lm, tmp_path, capsys):
    """Sequence-level KD: the teacher's completions as a .txt transfer set, packed into blocks like the training
    text, on which a strategy-hard student trains as next tokens (its train rows grow by exactly those blocks)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(lines(400, 440)), encoding="utf-8")
    transfer = tmp_path / "transfer.txt"
    assert main(["generate", run["dir"], "--teacher", "--prompts", str(prompts), "--max_new_tokens", "16",
                 "--out", str(transfer)]) == 0
    capsys.readouterr()
    expected = generate(run["dir"], [p.rstrip("\n") for p in lines(400, 440) if p.strip()],
                        Decoding(max_new_tokens=16), teacher=True)
    text = transfer.read_text(encoding="utf-8")
    assert text == transfer_text(expected)
    assert text.startswith(expected[0]["prompt"] + expected[0]["completion"])
    tok = lm["tokenizer"]
    tokens = sum(len(ids) for ids in tok(text.splitlines(keepends=True), add_special_tokens=False)["input_ids"])
    assert tokens // BLOCK >= 2
    seq = make_config(lm_values(lm, tmp_path / "seq", strategy="hard", transfer_file=str(transfer),
                                teacher_model=run["dir"] + "/teacher", teacher_train=False, num_train_epochs=1))
    trained = pipeline.distill(seq)
    assert trained["train_rows"] == run["trained"]["train_rows"] + tokens // BLOCK
