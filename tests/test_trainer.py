"""DistillationTrainer: gradient accumulation gives the gradient of the whole batch."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from kdistill import DistillationConfig, DistillationTrainer
from kdistill.tasks import get_task

from conftest import read_sst2_sentences


def _rows(tokenizer, labels):
    enc = tokenizer(read_sst2_sentences(len(labels)), truncation=True, max_length=32)
    return [
        {"input_ids": ids, "attention_mask": mask, "idx": i, "labels": label, "length": len(ids)}
        for i, (ids, mask, label) in enumerate(zip(enc["input_ids"], enc["attention_mask"], labels))
    ]


def _train_one_step(tmp_path, tokenizer, rows, teacher_logits, batch_size, accumulation, strategy, learning_rate=0.5):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    args = DistillationConfig(
        output_dir=str(tmp_path / f"b{batch_size}"), strategy=strategy, temperature=3.0, alpha=0.4,
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation, max_steps=1,
        optim="sgd", learning_rate=learning_rate, lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0,
        train_sampling_strategy="sequential", save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    )
    trainer = DistillationTrainer(model=model, args=args, train_dataset=rows,
                                  data_collator=get_task("sequence_classification").collator(tokenizer, teacher_logits))
    trainer.train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("strategy", ["hard", "soft", "mixed"])
def test_accumulated_uneven_batches_equal_one_big_batch(tmp_path, word_tokenizer, strategy):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    # Six rows, two of them unlabelled transfer rows (label -100) for the soft and mixed cases.
    labels = [0, 1, 1, 0, 1, 0] if strategy == "hard" else [0, 1, -100, 0, -100, 1]
    rows = _rows(tokenizer, labels)
    teacher_logits = torch.randn(6, 2, generator=torch.Generator().manual_seed(1)) * 2
    whole = _train_one_step(tmp_path, tokenizer, rows, teacher_logits, batch_size=6, accumulation=1, strategy=strategy)
    # Micro-batches of 4 and 2: a per-micro-batch mean divided by the accumulation steps would weight the last
    # two rows twice as much as the others.
    split = _train_one_step(tmp_path, tokenizer, rows, teacher_logits, batch_size=4, accumulation=2, strategy=strategy)
    untouched = _train_one_step(tmp_path, tokenizer, rows, teacher_logits, 6, 1, strategy, learning_rate=0.0)
    moved = max((whole[k] - untouched[k]).abs().max().item() for k in whole)
    differs = max((whole[k] - split[k]).abs().max().item() for k in whole)
    assert moved > 1e-4  # the step moved the weights, so the comparison is not between two untouched models
    assert differs < 1e-3 * moved, f"accumulated update differs from the whole-batch one by {differs} (step {moved})"


def test_trainer_needs_distillation_config(tmp_path, word_tokenizer):
    from transformers import TrainingArguments

    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32))
    with pytest.raises(TypeError, match="DistillationConfig"):
        DistillationTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True))


def test_logs_go_to_logging_not_stdout(tmp_path, word_tokenizer, capsys, caplog):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    rows = _rows(tokenizer, [0, 1, 1, 0])
    with caplog.at_level("DEBUG", logger="kdistill.trainer"):
        # disable_tqdm=True makes the stock Trainer print each log line to stdout.
        _train_one_step(tmp_path, tokenizer, rows, None, batch_size=2, accumulation=1, strategy="hard")
    assert "loss" not in capsys.readouterr().out
    assert any("loss" in r.getMessage() for r in caplog.records)


def test_without_a_progress_bar_training_reports_progress_at_info(tmp_path, word_tokenizer, capsys, caplog):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    rows = _rows(tokenizer, [0, 1, 1, 0, 1, 0, 0, 1])
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32))
    args = DistillationConfig(output_dir=str(tmp_path), strategy="hard", per_device_train_batch_size=2, max_steps=4,
                              logging_steps=2, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = DistillationTrainer(model=model, args=args, train_dataset=rows,
                                  data_collator=get_task("sequence_classification").collator(tokenizer, None))
    with caplog.at_level("INFO", logger="kdistill.trainer"):
        trainer.train()
    lines = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert [line.split(" (")[0] for line in lines if line.startswith("step ")] == ["step 2/4", "step 4/4"]
    assert "loss " in lines[0] and "elapsed" in lines[0] and "left" in lines[0]
    assert "left" not in lines[1]  # nothing left at the last step
    assert "step" not in capsys.readouterr().out


def test_progress_line_estimates_the_time_left_from_the_steps_so_far():
    from kdistill.trainer import progress_line

    line = progress_line(150, 600, 90.0, {"loss": 0.43125, "loss_hard_ce": 0.5, "learning_rate": 1e-4, "epoch": 0.5})
    assert line == "step 150/600 (25%), loss 0.4313, loss_hard_ce 0.5, 1m30s elapsed, about 4m30s left"
    assert progress_line(10, 10, 4000.0, {"loss": 1.0}) == "step 10/10 (100%), loss 1, 1h06m elapsed"
    # A run resumed at step 100: 50 steps in 60 s, so the 400 left take about 8 minutes.
    assert progress_line(150, 550, 60.0, {"loss": 0.5}, first_step=100).endswith("1m00s elapsed, about 8m00s left")


def _tiny_bert(tokenizer, seed, layers=1, init=0.02):
    torch.manual_seed(seed)
    # A random BERT's logits are near 0 at the usual init (0.02): with a wider one, teachers differ clearly.
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        initializer_range=init)
    return BertForSequenceClassification(config)


def _loss_on_one_batch(tmp_path, tokenizer, rows, teacher_logits=None, online=None, tokenizers=None):
    args = DistillationConfig(output_dir=str(tmp_path), strategy="mixed", temperature=2.0, alpha=0.5,
                              save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
    task = get_task("sequence_classification")
    trainer = DistillationTrainer(model=_tiny_bert(tokenizer, 0), args=args, train_dataset=rows, task=task,
                                  data_collator=task.collator(tokenizer, teacher_logits), processing_class=tokenizer,
                                  online_teachers=online, teacher_tokenizers=tokenizers)
    batch = trainer.data_collator(rows)
    trainer.model.eval()
    return trainer, float(trainer.compute_loss(trainer.model, batch).detach())


def test_online_teacher_gives_the_loss_of_its_cached_logits(tmp_path, word_tokenizer):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    rows = _rows(tokenizer, [0, 1, 1, 0])
    teacher = _tiny_bert(tokenizer, 7, layers=2, init=1.0).eval()
    batch = get_task("sequence_classification").collator(tokenizer)(rows)
    with torch.no_grad():
        cached = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    _, from_cache = _loss_on_one_batch(tmp_path, tokenizer, rows, teacher_logits=cached)
    trainer, online = _loss_on_one_batch(tmp_path, tokenizer, rows, online=[(teacher, 1.0)], tokenizers=[tokenizer])
    assert online == pytest.approx(from_cache, rel=1e-6)
    assert all(not p.requires_grad for p in teacher.parameters())
    # The online teacher is not part of the model: a checkpoint holds the student's weights only.
    assert not any(name.startswith("teacher") for name in trainer.model.state_dict())
    _, other = _loss_on_one_batch(tmp_path, tokenizer, rows, online=[(_tiny_bert(tokenizer, 8, 2, init=1.0).eval(), 1.0)])
    assert abs(other - from_cache) > 0.05  # another teacher: another loss, so the teacher really ran


def test_several_online_teachers_combine_as_ensemble_combine_says(tmp_path, word_tokenizer):
    from kdistill.losses import ensemble_logits

    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    rows = _rows(tokenizer, [0, 1, 1, 0])
    teachers = [_tiny_bert(tokenizer, seed, layers=2, init=1.0).eval() for seed in (7, 8)]
    batch = get_task("sequence_classification").collator(tokenizer)(rows)
    with torch.no_grad():
        a, b = (t(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits for t in teachers)
    trainer, online = _loss_on_one_batch(tmp_path, tokenizer, rows, online=[(teachers[0], 1.0), (teachers[1], 3.0)])
    _, mixture = _loss_on_one_batch(tmp_path, tokenizer, rows, teacher_logits=ensemble_logits([a, b], [1, 3], 2.0))
    assert online == pytest.approx(mixture, rel=1e-6)
    trainer.ensemble_combine = "logits"  # as pipeline.make_trainer sets it from the teacher section
    by_logits = float(trainer.compute_loss(trainer.model, trainer.data_collator(rows)).detach())
    _, mean = _loss_on_one_batch(tmp_path, tokenizer, rows, teacher_logits=0.25 * a + 0.75 * b)
    assert by_logits == pytest.approx(mean, rel=1e-6) and abs(by_logits - online) > 1e-3


def test_online_teacher_with_another_tokenizer_is_refused(tmp_path, word_tokenizer):
    from conftest import make_word_tokenizer

    from kdistill import UserError

    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    other = PreTrainedTokenizerFast.from_pretrained(make_word_tokenizer(tmp_path / "small", vocab_size=500))
    with pytest.raises(UserError, match=r"online teacher 1's tokenizer \(500 tokens\) differs from the student's "
                                        r"\(2000 tokens\).*soft_label_source: cache"):
        _loss_on_one_batch(tmp_path, tokenizer, _rows(tokenizer, [0, 1]),
                           online=[(_tiny_bert(other, 1), 1.0)], tokenizers=[other])
