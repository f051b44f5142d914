"""Completions of prompts from a causal_lm run's student or teacher (`kdistill generate`), and the transfer set of
sequence-level distillation.

Sequence-level KD (Kim & Rush 2016, "Sequence-Level Knowledge Distillation"): instead of matching the teacher's
distribution at every position of the training text, the student is trained on the teacher's own outputs, its
(approximately) most likely sequences found by beam or greedy search, as ordinary next-token targets. Here
`generate(RUN, prompts, teacher=True)` gives those sequences and `write_transfer_text` writes them as a plain-text
`transfer_file`, which a causal_lm run packs into blocks like its training text (with `strategy: hard` the student
trains on them as next-token targets; with a soft strategy the teacher's top-k on them is cached too).

Decoding is greedy by default, so a run's completions are reproducible; `num_beams` > 1 is beam search (what Kim &
Rush decode the teacher's transfer set with: beam 5 in their experiments), also deterministic; `do_sample` draws
with `temperature` and `top_p` (nucleus sampling, Holtzman et al. 2020) from a generator seeded with `seed`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import UserError
from .files import atomic_write, decode_error

logger = logging.getLogger(__name__)

CAUSAL_LM = "causal_lm"


@dataclass(frozen=True)
class Decoding:
    """How completions are chosen: greedy (the default), beam search (`num_beams` > 1) or sampled."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16
    num_beams: int = 1

    def check(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.num_beams < 1:
            raise UserError("generate: --max_new_tokens, --batch_size and --num_beams must be at least 1")
        if self.do_sample and self.num_beams > 1:
            raise UserError("generate: --do_sample draws one completion at random and --num_beams searches for the "
                            "most likely one; give one of them")
        if not self.temperature > 0:
            raise UserError(f"generate: --temperature must be positive, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"generate: --top_p must be in (0, 1], not {self.top_p}")


def model_dir(path: str, teacher: bool = False) -> str:
    """The model a path names: a causal_lm run's student (its teacher with `teacher`), or a model directory.

    A run whose task is not causal_lm, a run with no trained student, and `teacher` with a bare model directory are
    UserErrors naming what to give instead.
    """
    from .rundir import RUN_CONFIG, Run, RunPaths, read_json, run_teacher_dir

    if not os.path.isdir(path):
        raise UserError(f"generate: {path}: no such directory")
    if os.path.isfile(os.path.join(path, RUN_CONFIG)):
        run = Run(path, read_json(os.path.join(path, RUN_CONFIG)), {}, None)
        task = run.config.get("data", {}).get("task", "sequence_classification")
        if task != CAUSAL_LM:
            raise UserError(f"generate: {path} is a {task} run; generate completes text with a language model "
                            f"(a run with task: {CAUSAL_LM})")
        if teacher:
            return run_teacher_dir(run)
        student = RunPaths(path).student
        if not os.path.isfile(os.path.join(student, "config.json")):
            raise UserError(f"generate: no trained student in {student}: run `kdistill distill` first, or give "
                            "--teacher")
        return student
    if os.path.isfile(os.path.join(path, "config.json")):
        if teacher:
            raise UserError(f"generate: --teacher needs a run directory (with {RUN_CONFIG}); {path} is a model "
                            "directory: give it without --teacher")
        architectures = read_json(os.path.join(path, "config.json")).get("architectures") or []
        if architectures and not any(str(a).endswith("ForCausalLM") or str(a).endswith("LMHeadModel")
                                     for a in architectures):
            raise UserError(f"generate: {path} holds a {architectures[0]}, not a causal language model")
        return path
    raise UserError(f"generate: {path} is neither a kdistill run directory (no {RUN_CONFIG}) nor a model directory "
                    "(no config.json)")


def read_prompts(path: str, encoding: str = "utf-8") -> list[str]:
    """The prompts of a text file, one a line: line ends stripped, blank lines skipped."""
    if os.path.isdir(path):
        raise UserError(f"generate: {path}: is a directory, not a prompts file")
    if not os.path.isfile(path):
        raise UserError(f"generate: prompts file not found: {path}")
    try:
        with open(path, encoding=encoding) as fh:
            prompts = [line.rstrip("\r\n") for line in fh if line.strip()]
    except UnicodeDecodeError as err:
        raise decode_error(path, encoding, err) from None
    if not prompts:
        raise UserError(f"generate: {path} holds no prompts (only blank lines)")
    return prompts


def complete(model, tokenizer, prompts: Sequence[str], decoding: Decoding = Decoding()) -> list[str]:
    """Each prompt's completion (the new tokens only, decoded without special tokens) from `model.generate`, in
    batches of `decoding.batch_size` padded on the left (a causal LM continues from a batch's last column)."""
    import torch

    decoding.check()
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # A pad token of its own (lm_data.PAD_TOKEN) is never text: a sampled one would be read as padding downstream.
    never = {"suppress_tokens": [pad_id]} if pad_id != tokenizer.eos_token_id else {}
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    try:
        # Sampling draws from torch's global generators: seeded here, and the caller's state given back afterwards.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(decoding.seed)
            for start in range(0, len(prompts), decoding.batch_size):
                batch = list(prompts[start : start + decoding.batch_size])
                enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
                longest = enc["input_ids"].shape[1]
                if limit is not None and longest + decoding.max_new_tokens > limit:
                    raise UserError(f"generate: a prompt of {longest} tokens and --max_new_tokens "
                                    f"{decoding.max_new_tokens} pass the model's {limit} positions; shorten the "
                                    "prompts or lower --max_new_tokens")
                if not longest:
                    raise UserError("generate: a prompt encodes to no tokens")
                sampling = {"do_sample": True, "temperature": decoding.temperature, "top_p": decoding.top_p,
                            "top_k": 0} if decoding.do_sample else {"do_sample": False}
                if decoding.num_beams > 1:  # the highest-scoring beam, length-normalised as transformers does
                    sampling.update(num_beams=decoding.num_beams, early_stopping=True)
                with torch.inference_mode():
                    ids = model.generate(**{k: v.to(device) for k, v in enc.items()}, pad_token_id=pad_id,
                                         max_new_tokens=decoding.max_new_tokens, **sampling, **never)
                out += tokenizer.batch_decode(ids[:, longest:], skip_special_tokens=True)
                logger.info("generate: %d of %d prompts completed", len(out), len(prompts))
    finally:
        tokenizer.padding_side = side
    return out


def generate(path: str, prompts: Sequence[str], decoding: Decoding = Decoding(), teacher: bool = False,
             device: str = "cpu") -> list[dict[str, str]]:
    """{"prompt", "completion"} per prompt, from the student of the causal_lm run in `path` (its teacher with
    `teacher`), or from the model directory `path`.

    Args:
        device: where the model runs ("cpu", "cuda", ...).
    """
    from .students import load_classifier, load_tokenizer

    directory = model_dir(path, teacher)
    model = load_classifier(directory, "teacher" if teacher else "model", auto_model="AutoModelForCausalLM").to(device)
    tokenizer = load_tokenizer(directory, "tokenizer")
    completions = complete(model, tokenizer, prompts, decoding)
    return [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]


def transfer_text(rows: Iterable[dict[str, str]]) -> str:
    """Each row's prompt + completion, one after another, each ending in a line end: the plain text a causal_lm
    run reads as its `transfer_file` (packed into blocks like its training text)."""
    parts = []
    for row in rows:
        text = row["prompt"] + row["completion"]
        parts.append(text if text.endswith("\n") else text + "\n")
    return "".join(parts)


def write_completions(path: str, rows: Sequence[dict[str, str]]) -> None:
    """Write `rows` to `path` atomically: a .txt file as `transfer_text` (a transfer set), any other as JSON Lines."""
    if path.lower().endswith(".txt"):
        body = transfer_text(rows)
    else:
        body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(body)

    atomic_write(path, write)
