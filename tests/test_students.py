"""students.py: loading models and building the student. Here, the label-count check `load_classifier` makes on a
student or teacher that already has a head, through the real CLI: one line `kdistill: error: ...`, exit 2, no
student written."""

import pytest

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
