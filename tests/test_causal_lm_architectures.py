"""causal_lm with the hub's other architectures (issue 17: "the same configs take hub models"): a Qwen2 teacher, the
class of the Qwen2.5 models, distilled from its top-k cache into a student made of its layers; a padded student
vocabulary refused before any training; a copied layer keeping its attention kind. Tiny Qwen2s from configs."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from kdistill import pipeline
from kdistill.config import make_config
from kdistill.errors import UserError
from kdistill.evaluation import evaluate
from kdistill.lm_data import train_bpe_tokenizer
from kdistill.students import from_teacher

from conftest import SHARED

SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
BLOCK = 32


def qwen2(vocab: int, layers: int, **extra) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=128, tie_word_embeddings=True, **extra))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """Train/validation text, a BPE of the train lines, a 2-layer Qwen2 teacher and a Qwen2 student whose output
    layer is 64 rows wider than the tokenizer (a padded vocabulary), both saved with the BPE."""
    root = tmp_path_factory.mktemp("qwen")
    with open(SHAKESPEARE, encoding="utf-8") as fh:
        lines = fh.read().splitlines(keepends=True)[:400]
    train, validation = root / "train.txt", root / "validation.txt"
    train.write_text("".join(lines[:300]), encoding="utf-8")
    validation.write_text("".join(lines[300:]), encoding="utf-8")
    tok = train_bpe_tokenizer(lines[:300], 300, str(root / "tok"))
    ids = {"bos_token_id": tok.eos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    for name, model in (("teacher", qwen2(len(tok), 2, **ids)), ("padded", qwen2(len(tok) + 64, 1, **ids))):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return {"root": root, "train": str(train), "validation": str(validation), "teacher": str(root / "teacher"),
            "padded": str(root / "padded")}


def values(qwen, out, **overrides) -> dict:
    v = dict(task="causal_lm", train_file=qwen["train"], validation_file=qwen["validation"], block_size=BLOCK,
             teacher_model=qwen["teacher"], teacher_epochs=10, teacher_learning_rate=3e-3, teacher_batch_size=16,
             student_init="from_teacher", student_num_layers=1, output_dir=str(out), num_train_epochs=3,
             learning_rate=3e-3, per_device_train_batch_size=16, temperature=1.0, logging_steps=5,
             save_strategy="no", speed_batches=0, seed=0, use_cpu=True)
    v.update(overrides)
    return v


def test_a_qwen2_teacher_distils_from_its_top_k_cache_into_a_student_of_its_layers(qwen, tmp_path):
    config = make_config(values(qwen, tmp_path / "soft"))
    pipeline.teach(config)
    out = pipeline.distill(config)
    assert out["soft_label_cache"]["top_k"] == 64
    curve = out["loss_curve"]
    assert curve[-1][1] < curve[0][1]
    student = Qwen2ForCausalLM.from_pretrained(tmp_path / "soft" / "student")
    assert student.config.num_hidden_layers == 1 and len(student.config.layer_types) == 1
    scores = evaluate(config)["student"]
    assert 0 < scores["agreement"] <= 1 and scores["mean_kl"] >= 0 and scores["loss"] > 0


def test_a_padded_student_vocabulary_is_refused_before_it_trains(qwen, tmp_path):
    config = make_config(values(qwen, tmp_path / "padded", teacher_train=False, student_init="from_pretrained",
                                student_model=qwen["padded"]))
    pipeline.teach(config)
    with pytest.raises(UserError, match=r"the teacher's vocabulary has 300 tokens but the student's 364"):
        pipeline.distill(config)
    assert not (tmp_path / "padded" / "student" / "model.safetensors").exists()


def test_a_student_of_the_teacher_s_layers_keeps_each_one_s_attention_kind():
    kinds = ["full_attention", "sliding_attention", "full_attention"]
    teacher = qwen2(50, 3, use_sliding_window=True, sliding_window=4, layer_types=kinds)
    student = from_teacher(teacher, [1, 2])
    assert student.config.layer_types == ["sliding_attention", "full_attention"]
    assert [layer.self_attn.sliding_window for layer in student.model.layers] == [4, None]
    ids = torch.randint(0, 50, (1, 12))
    with torch.no_grad():  # the copy computes what the teacher's layers 1 and 2 compute, in turn
        hidden = teacher.model.embed_tokens(ids)
        position = torch.arange(12)[None]
        rotary = teacher.model.rotary_emb(hidden, position)
        masks = {"full_attention": torch.full((12, 12), float("-inf")).triu(1)[None, None],
                 "sliding_attention": (torch.full((12, 12), float("-inf")).triu(1)
                                       + torch.full((12, 12), float("-inf")).tril(-4))[None, None]}
        for i in (1, 2):
            hidden = teacher.model.layers[i](hidden, attention_mask=masks[kinds[i]], position_embeddings=rotary,
                                             position_ids=position)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        expected = teacher.lm_head(teacher.model.norm(hidden))
        assert torch.allclose(student(input_ids=ids).logits, expected, atol=1e-5)


def test_a_student_from_a_qwen2_config_with_fewer_layers_loads_back(qwen, tmp_path):
    from kdistill.config_sections import StudentConfig
    from kdistill.students import build_student

    spec = StudentConfig(student_init="from_config", student_config_overrides={"num_hidden_layers": 1})
    student, _ = build_student(spec, None, qwen["teacher"], {}, auto_model="AutoModelForCausalLM")
    assert student.config.layer_types == ["full_attention"]
    student.save_pretrained(tmp_path / "s")
    assert Qwen2ForCausalLM.from_pretrained(tmp_path / "s").config.num_hidden_layers == 1
    deeper = StudentConfig(student_init="from_config", student_config_overrides={"num_hidden_layers": 3})
    with pytest.raises(UserError, match="give student_config_overrides a layer_types of 3 entries"):
        build_student(deeper, None, qwen["teacher"], {}, auto_model="AutoModelForCausalLM")
