"""The distillation trainer most tutorials and blog posts show, written by us from that description (no code copied).

The recipe: a `transformers.Trainer` subclass whose `compute_loss` runs the teacher forward (under no_grad) on every
training step and mixes the temperature-softened KL divergence, times T², with cross-entropy on the gold labels;
data tokenised once with `padding="max_length", max_length=128` (as `run_glue.py` does unless told otherwise);
the Trainer's plain random sampler (no length grouping). It is the yardstick `speed_ratios.py` times kdistill
against: same student initialisation, data, seed, batch size, learning rate, temperature and alpha.

    loss = alpha * T² * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)     (batchmean KL)

Use it from Python (`train_guide`), or run it on its own:

    python benchmarks/baseline_guide_trainer.py --teacher runs/sst2-hard/teacher --rows 2000
"""

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import Trainer, TrainingArguments

MAX_LENGTH = 128


class GuideDistillationTrainer(Trainer):
    """Trainer that asks the teacher for its logits at every step, as the usual guide does."""

    def __init__(self, *args, teacher: torch.nn.Module, temperature: float = 2.0, alpha: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval()
        self.temperature = temperature
        self.alpha = alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(outputs.logits / t, dim=-1), F.softmax(teacher_logits / t, dim=-1), reduction="batchmean"
        ) * (t * t)
        hard = F.cross_entropy(outputs.logits, labels)
        loss = self.alpha * soft + (1 - self.alpha) * hard
        return (loss, outputs) if return_outputs else loss


def padded_dataset(tokenizer, texts: list[str], labels: list[int]) -> Dataset:
    """Tokenised once, every row padded to MAX_LENGTH (run_glue.py's default `pad_to_max_length`)."""
    data = Dataset.from_dict({"text": texts, "label": labels})

    def encode(batch):
        enc = tokenizer(batch["text"], padding="max_length", max_length=MAX_LENGTH, truncation=True)
        enc["labels"] = batch["label"]
        return enc

    return data.map(encode, batched=True, remove_columns=["text", "label"])


def train_guide(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    tokenizer,
    texts: list[str],
    labels: list[int],
    output_dir: str,
    temperature: float = 2.0,
    alpha: float = 0.5,
    learning_rate: float = 1e-4,
    batch_size: int = 32,
    epochs: float = 1.0,
    seed: int = 42,
    warmup_steps: float = 0.06,
    weight_decay: float = 0.01,
) -> dict:
    """Distil `teacher` into `student` the guide's way; returns the training loss and the seconds `train()` took.

    Tokenisation happens before the clock starts, as it would once before a run of several epochs.
    """
    train = padded_dataset(tokenizer, texts, labels)
    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        seed=seed,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = GuideDistillationTrainer(
        model=student, args=args, train_dataset=train, teacher=teacher, temperature=temperature, alpha=alpha
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    return {"train_seconds": seconds, "train_loss": result.training_loss, "train_rows": len(train),
            "steps": trainer.state.global_step, "sampler": args.train_sampling_strategy, "max_length": MAX_LENGTH}


def main() -> int:
    import csv

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="a fine-tuned sequence-classification teacher directory")
    parser.add_argument("--train_file", default="../shared/data/sst2/train.tsv")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 5], help="teacher layers the student keeps")
    parser.add_argument("--output_dir", default="runs/guide")
    args = parser.parse_args()
    with open(args.train_file, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[: args.rows]
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)
    # The guide's student: the teacher with only some of its layers (a plain copy, then drop the rest).
    student = AutoModelForSequenceClassification.from_pretrained(args.teacher)
    student.bert.encoder.layer = torch.nn.ModuleList([student.bert.encoder.layer[i] for i in args.layers])
    student.config.num_hidden_layers = len(args.layers)
    out = train_guide(student, teacher, tokenizer, [r["sentence"] for r in rows], [int(r["label"]) for r in rows],
                      args.output_dir)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
