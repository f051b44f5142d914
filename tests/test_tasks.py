"""The task seam: the registry, the shared collator, and a third task written here, in this file alone."""

import json

import pytest
import torch
from torch import nn

from kdistill import DistillationConfig
from kdistill.losses import TERMS, Term
from kdistill.pipeline import make_trainer
from kdistill.tasks import TASKS, get_task, register_task
from kdistill.tasks.base import ItemCollator, Task, stack_labels


def test_registry_names_the_tasks_and_refuses_others():
    assert get_task("sequence_classification").item == "row"
    assert get_task("image_classification").auto_model is None
    with pytest.raises(ValueError, match="^unknown task 'ner'; valid tasks: sequence_classification, image_classification"):
        get_task("ner")


def test_labels_stack_per_row_per_token_and_as_floats():
    assert stack_labels([1, 0, 2]).tolist() == [1, 0, 2]
    assert stack_labels([[1, 2, 3], [4]]).tolist() == [[1, 2, 3], [4, -100, -100]]
    assert stack_labels([0.5, 1.5]).dtype == torch.float32


def test_collator_pads_ragged_soft_labels_per_item():
    # Two rows of 3 and 1 items (words, say): the teacher's logits come back as [B, L, C], zero-padded.
    ragged = [torch.ones(3, 2), torch.full((1, 2), 2.0)]

    class Ragged:
        def __getitem__(self, idx):
            return [ragged[i] for i in idx.tolist()]

    collate = ItemCollator(lambda rows: {"x": torch.tensor([r["x"] for r in rows])}, Ragged())
    batch = collate([{"x": 1, "labels": [0, 1, 1], "idx": 0}, {"x": 2, "labels": [1], "idx": 1}])
    assert batch["teacher_logits"].shape == (2, 3, 2)
    assert batch["teacher_logits"][1].tolist() == [[2.0, 2.0], [0.0, 0.0], [0.0, 0.0]]
    assert batch["labels"].tolist() == [[0, 1, 1], [1, -100, -100]]


# --- a third task, regression on random tensors, with a loss term of its own: nothing outside this file changes --


class Regression(Task):
    name = "toy_regression"
    item = "row"

    def pad_inputs(self, tokenizer=None):
        return lambda rows: {"features": torch.stack([r["features"] for r in rows])}

    def metrics(self, student_logits, labels, teacher_logits, num_labels):
        out = {"mse": float(((student_logits.squeeze(-1) - labels) ** 2).mean())}
        if teacher_logits is not None:
            out["mse_to_teacher"] = float(((student_logits - teacher_logits) ** 2).mean())
        return out


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def forward(self, features):
        return {"logits": self.layer(features)}


@pytest.fixture
def regression_term():
    # A term of the task's own: squared error against the (float) gold targets.
    TERMS["target_mse"] = Term(lambda x: ((x.student_logits.squeeze(-1) - x.labels) ** 2).mean(), ("labels",),
                               "squared error to the regression target")
    yield
    del TERMS["target_mse"]


def test_a_new_task_trains_through_the_engine_unchanged(tmp_path, regression_term):
    register_task("toy_regression", Regression())
    assert "toy_regression" in TASKS
    task = get_task("toy_regression")
    g = torch.Generator().manual_seed(0)
    features = torch.randn(64, 4, generator=g)
    true_w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    targets = (features @ true_w).squeeze(-1)
    teacher = features @ (true_w + 0.1)  # a teacher close to the truth: its outputs are the "soft labels"
    rows = [{"features": features[i], "labels": float(targets[i]), "idx": i} for i in range(64)]
    torch.manual_seed(0)
    student = Linear()
    before = task.metrics(student(features)["logits"].detach(), targets, teacher, 1)
    args = DistillationConfig(output_dir=str(tmp_path), objective=json.dumps({"logit_mse": 1.0, "target_mse": 0.5}),
                              max_steps=150, per_device_train_batch_size=16, learning_rate=0.05,
                              train_sampling_strategy="random", save_strategy="no", report_to="none", use_cpu=True,
                              disable_tqdm=True, logging_steps=50, weight_decay=0.0)
    trainer = make_trainer(task, student, args, rows, teacher_logits=teacher)
    trainer.train()
    after = task.metrics(student(features)["logits"].detach(), targets, teacher, 1)
    assert after["mse_to_teacher"] < 0.05 * before["mse_to_teacher"]
    assert after["mse"] < 0.05 * before["mse"]
    logged = [e for e in trainer.state.log_history if "loss_target_mse" in e and "loss_logit_mse" in e]
    assert logged, "each term of the objective is logged as its own curve"
