"""students.py: loading models and building the student: the label-count check `load_classifier` makes on a
student or teacher that already has a head (through the real CLI: one line `kdistill: error: ...`, exit 2, no
student written), the teacher layers a student takes, and students made from a config."""

import pytest

from kdistill.errors import UserError
from conftest import assert_user_error, make_tiny_bert, run_cli, write_config


@pytest.fixture(scope="module")
def three_label_classifier(tmp_path_factory, word_tokenizer) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("three_labels"), word_tokenizer, num_labels=3)


def test_student_with_other_label_count(capsys, tmp_path, values, three_label_classifier):
    config = write_config(tmp_path / "c.yaml", {
        **values, "strategy": "hard", "student_init": "from_pretrained", "student_model": three_label_classifier,
        "student_num_layers": None,
    })
    code, err = run_cli(capsys, "distill", "--config", config)
    assert_user_error(code, err, f"student {three_label_classifier} has 3 output labels but the data has 2")
    assert not (tmp_path / "run" / "student").exists()


def test_teacher_with_other_label_count(capsys, tmp_path, values, three_label_classifier):
    config = write_config(tmp_path / "c.yaml", {**values, "teacher_model": three_label_classifier})
    code, err = run_cli(capsys, "teach", "--config", config)
    assert_user_error(code, err, f"teacher {three_label_classifier} has 3 output labels but the data has 2")


def test_spaced_layers_take_the_first_and_last_and_spread_the_rest():
    from kdistill.students import spaced_layers

    assert (spaced_layers(6, 2), spaced_layers(6, 3), spaced_layers(6, 1), spaced_layers(12, 4)) == \
        ([0, 5], [0, 2, 5], [5], [0, 4, 7, 11])
    with pytest.raises(UserError, match="^student: student_num_layers must be between 1 and 6, got 7$"):
        spaced_layers(6, 7)


def test_from_teacher_copies_the_chosen_layers_embeddings_and_head(tiny_bert):
    import torch

    from kdistill.students import from_teacher, load_classifier

    teacher = load_classifier(tiny_bert, "teacher", {"0": 0, "1": 1})
    student = from_teacher(teacher, [1])
    t, s = teacher.state_dict(), student.state_dict()
    assert student.config.num_hidden_layers == 1
    assert torch.equal(s["bert.encoder.layer.0.attention.self.query.weight"], t["bert.encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])
    with pytest.raises(UserError, match=r"student_layers must be indices in 0\.\.1, got \[2\]"):
        from_teacher(teacher, [2])


def test_from_config_changes_the_fields_it_is_given(tiny_bert):
    from kdistill.config import StudentConfig
    from kdistill.students import build_student

    spec = StudentConfig(student_init="from_config", student_model=tiny_bert,
                         student_config_overrides={"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32})
    model, tokenizer = build_student(spec, None, tiny_bert, {"neg": 0, "pos": 1})
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_labels) == (1, 16, 2)
    assert model.config.id2label == {0: "neg", 1: "pos"} and len(tokenizer) == 2000
    bad = StudentConfig(student_init="from_config", student_model=tiny_bert, student_config_overrides={"depth": 1})
    with pytest.raises(UserError, match="^student: config BertConfig has no field 'depth'$"):
        build_student(bad, None, tiny_bert, {"neg": 0, "pos": 1})
