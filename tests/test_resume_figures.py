"""A run resumed part-way through a logging window records the figures of the run it continues.

The Trainer drains its running loss into a log every `logging_steps` and into `train_loss` at the end; a checkpoint
saved between two logs holds the weights, optimizer, scheduler and RNG states but not those running sums, so on its
own it would restart them at zero: the first log after a resume would average only the steps since, and train_loss
only this process's steps. DistillationTrainer saves them in the checkpoint and puts them back.
"""

import json
import shutil

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from kdistill import DistillationConfig, DistillationTrainer
from kdistill.tasks import get_task
from kdistill.trainer import LOSS_SUMS_NAME

from conftest import read_sst2_sentences

# 12 steps of 2 micro-batches of 2 rows; logs at 4, 8 and 12; checkpoints at 3, 6, 9 and 12: each one inside a
# logging window, so a resume from it starts with a partial window to finish.
STEPS, LOGGING_STEPS, SAVE_STEPS = 12, 4, 3


@pytest.fixture(scope="module")
def data(word_tokenizer):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    labels = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 0]
    enc = tokenizer(read_sst2_sentences(len(labels)), truncation=True, max_length=32)
    rows = [{"input_ids": ids, "attention_mask": mask, "idx": i, "labels": label}
            for i, (ids, mask, label) in enumerate(zip(enc["input_ids"], enc["attention_mask"], labels))]
    teacher_logits = torch.randn(len(rows), 2, generator=torch.Generator().manual_seed(1)) * 2
    return tokenizer, rows, teacher_logits


def _train(out, data, resume_from_checkpoint=None):
    tokenizer, rows, teacher_logits = data
    torch.manual_seed(0)
    # Dropout on: the checkpoint's RNG state must come back too for the losses after the resume to be the same.
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32))
    args = DistillationConfig(
        output_dir=str(out), strategy="mixed", temperature=2.0, alpha=0.5, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, max_steps=STEPS, logging_steps=LOGGING_STEPS, save_strategy="steps",
        save_steps=SAVE_STEPS, save_total_limit=None, learning_rate=1e-3, report_to="none", use_cpu=True,
        disable_tqdm=True, seed=0,
    )
    task = get_task("sequence_classification")
    trainer = DistillationTrainer(model=model, args=args, train_dataset=rows, task=task,
                                  data_collator=task.collator(tokenizer, teacher_logits))
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return result, trainer.state.log_history, weights


def _figures(log_history):
    """Every logged figure that is not a time or a throughput: the loss curves, grad norms, rates, train_loss."""
    timed = ("runtime", "per_second")
    return [{k: v for k, v in entry.items() if not any(t in k for t in timed)} for entry in log_history]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("uninterrupted")
    return (out, *_train(out, data))


@pytest.mark.parametrize("resume_at", [6, 9])
def test_a_run_resumed_inside_a_logging_window_records_the_uninterrupted_figures(tmp_path, data, uninterrupted,
                                                                                 resume_at):
    ref_out, ref_result, ref_history, ref_weights = uninterrupted
    result, history, weights = _train(tmp_path, data, resume_from_checkpoint=str(ref_out / f"checkpoint-{resume_at}"))
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)  # the same training, bit for bit
    logged = [e for e in history if "loss" in e]
    assert [e["step"] for e in logged] == [4, 8, 12]
    assert set(logged[0]) >= {"loss", "loss_hard_ce", "loss_soft_kl", "grad_norm", "learning_rate"}
    # The first log after the resume covers the whole window (steps 5-8 from 6, 9-12 from 9), not the steps since.
    assert _figures(history) == _figures(ref_history)
    assert result.training_loss == ref_result.training_loss
    assert result.metrics["train_loss"] == ref_result.metrics["train_loss"] == history[-1]["train_loss"]


def test_a_run_resumed_twice_records_the_uninterrupted_figures(tmp_path, data, uninterrupted):
    ref_out, ref_result, ref_history, _ = uninterrupted
    _train(tmp_path / "first", data, resume_from_checkpoint=str(ref_out / "checkpoint-6"))
    # Checkpoint 9 written by the resumed process: the sums it saved carry the steps before its resume too.
    result, history, _ = _train(tmp_path / "second", data,
                                resume_from_checkpoint=str(tmp_path / "first" / "checkpoint-9"))
    assert _figures(history) == _figures(ref_history)
    assert result.training_loss == ref_result.training_loss


def test_the_checkpoint_holds_the_partial_window_sums(uninterrupted):
    ref_out, _, ref_history, _ = uninterrupted
    sums = json.loads((ref_out / "checkpoint-6" / LOSS_SUMS_NAME).read_text(encoding="utf-8"))
    assert sums["last_logged_step"] == 4 and sums["first_step"] == 0
    # Steps 1-4 are drained into the total (their log's loss times 4 steps); steps 5-6 are the window's running sum.
    assert sums["total_loss"] == pytest.approx(ref_history[0]["loss"] * 4, rel=1e-6)
    assert sums["window_loss"] > 0
    assert {name: len(values) for name, values in sums["window_terms"].items()} == {"hard_ce": 4, "soft_kl": 4}


def test_a_checkpoint_without_the_sums_still_resumes_and_says_what_its_figures_count(tmp_path, data, uninterrupted,
                                                                                      caplog):
    ref_out, ref_result, ref_history, ref_weights = uninterrupted
    old = tmp_path / "checkpoint-6"
    shutil.copytree(ref_out / "checkpoint-6", old)
    (old / LOSS_SUMS_NAME).unlink()  # what a kdistill from before the sums were saved left
    with caplog.at_level("WARNING", logger="kdistill.trainer"):
        result, history, weights = _train(tmp_path / "run", data, resume_from_checkpoint=str(old))
    assert [r.getMessage() for r in caplog.records if r.name == "kdistill.trainer"] == [
        f"checkpoint {old} has no usable {LOSS_SUMS_NAME} (an older kdistill wrote it): the first loss logged after "
        "resuming and train_loss count only the steps from 6 on"
    ]
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)
    # The Trainer's own figures, as before: step 8's loss averages steps 7-8; train_loss steps 7-12.
    logged = [e for e in history if "loss" in e]
    assert logged[0] == next(e for e in ref_history if e["step"] == 4)  # from the checkpoint's log_history
    assert logged[1]["loss"] != next(e for e in ref_history if e["step"] == 8)["loss"]
    assert result.training_loss != ref_result.training_loss
