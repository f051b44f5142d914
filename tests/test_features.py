"""Intermediate-layer terms: hidden_mse, hidden_cosine, pkd, attention_kl, embedding_mse, the layer map and the
width projections, as pure functions on tensors and inside the trainer."""

import copy
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from kdistill import DistillationConfig, DistillationTrainer, UserError
from kdistill.losses import features
from kdistill.losses.features import attention_kl, embedding_mse, hidden_cosine, hidden_mse, layer_map, pkd
from kdistill.tasks import get_task
from kdistill.trainer import PROJECTIONS_NAME

from conftest import read_sst2_sentences

# --- the terms on tensors ---------------------------------------------------------------------------------------


def test_hidden_mse_averages_real_tokens_then_layers():
    s = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]]])  # [batch 1, 3 tokens, width 2]
    t = torch.zeros_like(s)
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding: its 81 never counts
    assert hidden_mse([s], [t], mask).item() == pytest.approx((1 + 9) / 2)
    # Two layers: the mean of the layers' values (5 and 0), not their sum.
    assert hidden_mse([s, t], [t, t], mask).item() == pytest.approx(2.5)
    assert hidden_mse([s], [s.clone()], mask).item() == 0.0
    assert embedding_mse(s, t, mask).item() == pytest.approx(5.0)


def test_hidden_cosine_ignores_norms_and_counts_directions():
    s = torch.tensor([[[1.0, 0.0], [2.0, 2.0]]])
    t = torch.tensor([[[0.0, 5.0], [1.0, 1.0]]])  # orthogonal (1 - 0), then parallel at another norm (1 - 1)
    assert hidden_cosine([s], [t]).item() == pytest.approx(0.5)
    assert hidden_cosine([s], [t], torch.tensor([[0, 1]])).item() == pytest.approx(0.0, abs=1e-7)


def test_pkd_compares_normalised_first_token_states():
    s = torch.tensor([[[3.0, 0.0], [7.0, 7.0]], [[1.0, 1.0], [0.0, 0.0]]])
    t = torch.tensor([[[0.0, 0.5], [1.0, 0.0]], [[2.0, 2.0], [5.0, 5.0]]])
    # Row 1: |(1, 0) - (0, 1)|^2 = 2; row 2: same direction, 0. Other tokens never count.
    assert pkd([s], [t]).item() == pytest.approx(1.0)


def test_attention_kl_matches_a_hand_computed_value_and_skips_padding_queries():
    teacher = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # [batch 1, 1 head, 2 queries, 2 keys]
    student = torch.tensor([[[[0.25, 0.75], [0.1, 0.9]]]])
    first_query = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    second_query = 1.0 * math.log(1.0 / 0.1)  # the zero-mass key contributes 0
    assert attention_kl([student], [teacher]).item() == pytest.approx((first_query + second_query) / 2, rel=1e-5)
    assert attention_kl([student], [teacher], torch.tensor([[1, 0]])).item() == pytest.approx(first_query, rel=1e-5)
    assert attention_kl([teacher], [teacher.clone()]).item() == pytest.approx(0.0, abs=1e-7)


def test_attention_kl_compares_head_averages_when_head_counts_differ():
    teacher = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # 2 heads, 1 query: their mean is (0.5, 0.5)
    student = torch.tensor([[[[0.5, 0.5]]]])
    assert attention_kl([student], [teacher]).item() == pytest.approx(0.0, abs=1e-7)


def test_feature_terms_send_gradients_to_the_student_only():
    s = torch.randn(2, 3, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, requires_grad=True)
    for fn in (hidden_mse, hidden_cosine, pkd):
        s.grad = t.grad = None
        fn([s], [t]).backward()
        assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_mismatched_shapes_say_what_to_do():
    with pytest.raises(ValueError, match=r"student states of shape \(1, 2, 3\) against teacher states of shape "
                                         r"\(1, 2, 4\); project the student's"):
        hidden_mse([torch.zeros(1, 2, 3)], [torch.zeros(1, 2, 4)])


# --- the layer map -----------------------------------------------------------------------------------------------


def test_layer_map_rules_and_defaults():
    assert layer_map("uniform", 3, 6) == {0: 1, 1: 3, 2: 5}  # PKD-skip: every second layer, ending at the last
    assert layer_map("last", 2, 6) == {0: 4, 1: 5}
    assert layer_map(None, 3, 6, copied_from=[0, 2, 5]) == {0: 0, 1: 2, 2: 5}  # from_teacher: its own layers
    assert layer_map(None, 2, 4) == {0: 1, 1: 3}
    assert layer_map({"1": 5, 0: 2}, 2, 6) == {0: 2, 1: 5}  # YAML keys come as ints, JSON keys as strings


@pytest.mark.parametrize("spec, message", [
    ("every", r"layer_map must be uniform or last or a mapping"),
    ({}, r"a non-empty mapping"),
    ({"0": 6}, r"teacher layer 6 is not in 0..5"),
    ({"2": 0}, r"student layer 2 is not in 0..1"),
    ({"a": 0}, r"'a': 0 is not a pair of layer numbers"),
    ({"0": 1.5}, r"'0': 1.5 is not a pair of layer numbers"),
])
def test_bad_layer_maps_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        layer_map(spec, 2, 6)


def test_layer_map_in_the_config_is_checked_and_kept(tmp_path):
    from kdistill.config import ConfigError

    args = DistillationConfig(output_dir=str(tmp_path), layer_map={0: 1, 1: 5})
    assert args.layer_map_spec() == {"0": 1, "1": 5}
    assert DistillationConfig(output_dir=str(tmp_path), layer_map="last").layer_map_spec() == "last"
    assert DistillationConfig(output_dir=str(tmp_path), layer_map='{"0": 3}').layer_map_spec() == {"0": 3}
    with pytest.raises(ConfigError, match=r"distill: layer_map must be a mapping, got list"):
        DistillationConfig(output_dir=str(tmp_path), layer_map="[1, 2]")


# --- in the trainer ----------------------------------------------------------------------------------------------


def _bert(tokenizer, seed, layers=2, hidden=16, heads=2, dropout=0.0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=dropout, initializer_range=0.5)
    return BertForSequenceClassification(config)


def _rows(tokenizer, n):
    enc = tokenizer(read_sst2_sentences(n), truncation=True, max_length=24)
    return [{"input_ids": ids, "attention_mask": m, "idx": i, "labels": i % 2, "length": len(ids)}
            for i, (ids, m) in enumerate(zip(enc["input_ids"], enc["attention_mask"]))]


def _trainer(tmp_path, tokenizer, student, teacher, objective, **kwargs):
    layer_map_ = kwargs.pop("layer_map", None)
    settings = dict(save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
    args = DistillationConfig(output_dir=str(tmp_path / "out"), objective=objective, **{**settings, **kwargs})
    task = get_task("sequence_classification")
    return DistillationTrainer(model=student, args=args, train_dataset=_rows(tokenizer, 12), task=task,
                               data_collator=task.collator(tokenizer), processing_class=tokenizer,
                               online_teachers=[(teacher, 1.0)], layer_map=layer_map_)


def _parts(trainer, rows):
    batch = trainer.data_collator(rows)
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, batch)
    return float(loss.detach()), {k: v[-1] for k, v in trainer._loss_parts["eval"].items()}, batch


def test_a_student_equal_to_its_teacher_has_zero_feature_terms(tmp_path, word_tokenizer):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    teacher = _bert(tokenizer, 1).eval()
    objective = {"hidden_mse": 1, "hidden_cosine": 1, "pkd": 1, "attention_kl": 1, "embedding_mse": 1}
    trainer = _trainer(tmp_path, tokenizer, copy.deepcopy(teacher), teacher, objective, layer_map={0: 0, 1: 1})
    _, parts, _ = _parts(trainer, _rows(tokenizer, 6))
    assert set(parts) == set(objective)
    assert all(abs(v) < 1e-5 for v in parts.values()), parts
    # A shifted map compares layer 0 with layer 1: no longer zero, so the terms really read the mapped layers.
    trainer = _trainer(tmp_path, tokenizer, copy.deepcopy(teacher), teacher, objective, layer_map={0: 1, 1: 1})
    _, shifted, _ = _parts(trainer, _rows(tokenizer, 6))
    assert shifted["hidden_mse"] > 1e-3 and shifted["attention_kl"] > 1e-4 and shifted["embedding_mse"] < 1e-5


def test_trainer_terms_equal_the_functions_on_the_models_outputs(tmp_path, word_tokenizer):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    teacher, student = _bert(tokenizer, 1, layers=4).eval(), _bert(tokenizer, 2, layers=2)
    trainer = _trainer(tmp_path, tokenizer, student, teacher, {"hidden_mse": 0.5, "pkd": 2.0})
    loss, parts, batch = _parts(trainer, _rows(tokenizer, 6))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        s = student(**inputs, output_hidden_states=True).hidden_states
        t = teacher(**inputs, output_hidden_states=True).hidden_states
    # Default map for a 2-layer student of a 4-layer teacher: uniform, layers 1 and 3.
    expected_mse = hidden_mse([s[1], s[2]], [t[2], t[4]], batch["attention_mask"])
    expected_pkd = pkd([s[1], s[2]], [t[2], t[4]])
    assert parts["hidden_mse"] == pytest.approx(float(expected_mse), rel=1e-5)
    assert parts["pkd"] == pytest.approx(float(expected_pkd), rel=1e-5)
    assert loss == pytest.approx(0.5 * float(expected_mse) + 2.0 * float(expected_pkd), rel=1e-5)


def test_attention_kl_turns_the_students_attention_dropout_off(tmp_path, word_tokenizer):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    student = _bert(tokenizer, 2, dropout=0.3)
    _trainer(tmp_path, tokenizer, student, _bert(tokenizer, 1), {"attention_kl": 1.0})
    probs = [m.dropout.p for m in student.modules() if type(m).__name__ == "BertSelfAttention"]
    assert probs == [0.0, 0.0]
    hidden = [m.p for n, m in student.named_modules() if n.endswith("output.dropout")]
    assert hidden and all(p == 0.0 for p in hidden)  # this config's hidden dropout was 0 already: left as it was
    assert student.config._attn_implementation == "eager"


def test_pkd_under_gradient_accumulation_gives_the_whole_batch_gradient(tmp_path, word_tokenizer):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    teacher = _bert(tokenizer, 1).eval()

    def one_step(batch, accumulation, lr=0.5):
        student = _bert(tokenizer, 2)
        trainer = _trainer(tmp_path, tokenizer, student, teacher, {"pkd": 1.0, "hard_ce": 1.0},
                           per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, max_steps=1,
                           optim="sgd", learning_rate=lr, lr_scheduler_type="constant", max_grad_norm=0.0,
                           weight_decay=0.0, train_sampling_strategy="sequential")
        trainer.train()
        return {k: v.detach().clone() for k, v in student.state_dict().items()}

    whole, split, untouched = one_step(12, 1), one_step(6, 2), one_step(12, 1, lr=0.0)
    moved = max((whole[k] - untouched[k]).abs().max().item() for k in whole)
    differs = max((whole[k] - split[k]).abs().max().item() for k in whole)
    assert moved > 1e-4
    assert differs < 1e-3 * moved, f"accumulated update differs from the whole-batch one by {differs} (step {moved})"


def test_a_narrower_student_trains_projections_that_are_not_saved_with_it(tmp_path, word_tokenizer):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    teacher, student = _bert(tokenizer, 1, hidden=32), _bert(tokenizer, 2, hidden=16)
    plain = sum(p.numel() for p in student.parameters())
    trainer = _trainer(tmp_path, tokenizer, student, teacher, {"hidden_mse": 1.0, "embedding_mse": 1.0},
                       max_steps=2, learning_rate=0.05, save_strategy="steps", save_steps=2, logging_steps=1)
    projections = getattr(student, PROJECTIONS_NAME)
    before = projections.maps["0"].weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, projections.maps["0"].weight)  # they trained with the student
    # The checkpoint keeps them (a resumed run needs them); the saved student does not.
    checkpoint = load_file(str(tmp_path / "out" / "checkpoint-2" / "model.safetensors"))
    assert any(k.startswith(PROJECTIONS_NAME) for k in checkpoint)
    trainer.save_model(str(tmp_path / "student"))
    saved = load_file(str(tmp_path / "student" / "model.safetensors"))
    assert not any(k.startswith(PROJECTIONS_NAME) for k in saved)
    assert sum(v.numel() for v in saved.values()) == plain
    assert getattr(student, PROJECTIONS_NAME) is projections  # put back after saving
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path / "student")
    assert sum(p.numel() for p in reloaded.parameters()) == plain
    losses = [e["loss_hidden_mse"] for e in trainer.state.log_history if "loss_hidden_mse" in e]
    assert len(losses) == 2 and all(v > 0 for v in losses)


def test_feature_terms_need_one_transformers_teacher(tmp_path, word_tokenizer):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    args = DistillationConfig(output_dir=str(tmp_path), objective={"pkd": 1.0}, report_to="none", use_cpu=True)
    two = [(_bert(tokenizer, 1), 1.0), (_bert(tokenizer, 3), 1.0)]
    with pytest.raises(UserError, match=r"the objective's pkd read the teacher's hidden states, which need exactly "
                                        r"one teacher running in the trainer; got 2"):
        DistillationTrainer(model=_bert(tokenizer, 2), args=args, online_teachers=two)
    with pytest.raises(UserError, match=r"got 0"):
        DistillationTrainer(model=_bert(tokenizer, 2), args=args)
    with pytest.raises(UserError, match=r"need a transformers student whose config gives num_hidden_layers"):
        DistillationTrainer(model=torch.nn.Linear(2, 2), args=args, online_teachers=two[:1])
    with pytest.raises(UserError, match=r"teacher layer 7 is not in 0..1 \(the student has 2 layers, the teacher 2\)"):
        DistillationTrainer(model=_bert(tokenizer, 2), args=args, online_teachers=two[:1], layer_map={0: 7})


def test_run_with_feature_terms_from_a_cached_teacher(tmp_path, tiny_bert):
    """End to end: logits from the cache, hidden states from the teacher in the trainer, each term its curve."""
    from conftest import tiny_run_values

    from kdistill.config import make_config
    from kdistill.pipeline import distill, teach

    values = tiny_run_values(tmp_path / "run", tiny_bert, max_train_samples=96, max_eval_samples=64,
                             teacher_epochs=1, num_train_epochs=1, objective={"soft_kl": 0.5, "hard_ce": 0.5,
                                                                              "hidden_mse": 1.0, "pkd": 1.0})
    config = make_config(values)
    teach(config)
    result = distill(config)
    curves = [e for e in result["log_history"] if "loss_hidden_mse" in e]
    assert curves and all("loss_pkd" in e and "loss_soft_kl" in e for e in curves)
    assert "eval_loss_hidden_mse" in result
    # The 1-layer from_teacher student (teacher layer 1, the last) learns from the layer it was copied from.
    assert features.layer_map(None, 1, 2, copied_from=[1]) == {0: 1}
    saved = load_file(str(tmp_path / "run" / "student" / "model.safetensors"))
    assert not any(k.startswith(PROJECTIONS_NAME) for k in saved)


def test_feature_terms_are_refused_before_any_teacher_pass_where_they_cannot_work(tmp_path, tiny_bert):
    from conftest import tiny_run_values

    from kdistill.config import ConfigError, make_config
    from kdistill.validate import check_run

    values = tiny_run_values(tmp_path / "run", tiny_bert, objective={"hidden_mse": 1.0, "hard_ce": 1.0})
    with pytest.raises(ConfigError, match=r"objective terms hidden_mse compare hidden states layer by layer, which a "
                                          r"BiLSTM student does not have"):
        check_run(make_config({**values, "student_num_layers": None}, student_init="bilstm"))
    two = [{"model": tiny_bert, "weight": 1}, {"model": tiny_bert, "weight": 2}]
    with pytest.raises(ConfigError, match=r"read one teacher's hidden states; with several teachers"):
        check_run(make_config(values, teachers=two, teacher_train=False))
    check_run(make_config(values))  # one transformers teacher and student: fine
