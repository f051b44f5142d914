"""Config files, flags over YAML, and the messages a user sees for a config they got wrong."""

from pathlib import Path

import pytest

from kdistill.config import ConfigError, load_yaml, make_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


BASE_YAML = """\
data:
  train_file: train.tsv
  text_column: sentence
student:
  student_layers: [0, 5]
distill:
  output_dir: out
  strategy: soft
  temperature: 2.0
  alpha: 0.3
"""


def test_there_are_configs():
    assert CONFIGS, "configs/*.yaml: no example configs found"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates_and_names_its_command(path):
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# kdistill "), first_line
    assert f"--config configs/{path.name}" in first_line
    if first_line.startswith("# kdistill compare "):  # a sweep: a run config plus students and grid
        from kdistill.compare import _student_config, load_sweep

        sweep = load_sweep(str(path))
        assert sweep.cells()
        configs = [_student_config(sweep, name, []) for name in sweep.students]
    else:
        configs = [make_config(load_yaml(path))]
    assert all(config.data.train_file for config in configs)


def test_unknown_key_in_section_names_it_and_suggests_a_close_match(tmp_path):
    path = write_yaml(tmp_path, "data:\n  train_file: t.tsv\ndistill:\n  temprature: 4\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    message = str(err.value)
    assert "unknown config key 'temprature'" in message
    assert "section 'distill'" in message
    assert "Did you mean temperature, temperature_schedule?" in message
    assert "Valid keys:" in message


def test_unknown_key_lists_kdistill_own_keys_first(tmp_path):
    # No close match here, so the distillation knobs must appear in the (truncated) list of valid keys.
    path = write_yaml(tmp_path, "distill:\n  zzz_nothing_like_it: 1\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    message = str(err.value)
    assert "Did you mean" not in message
    valid = message.split("Valid keys: ")[1]
    for key in ("strategy", "temperature", "alpha", "soft_loss"):
        assert key in valid.split(", ")


def test_unknown_section_names_the_valid_sections(tmp_path):
    path = write_yaml(tmp_path, "destill:\n  temperature: 4\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    message = str(err.value)
    assert "'destill'" in message
    assert "data, teacher, student, distill" in message


def test_top_level_list_is_rejected(tmp_path):
    path = write_yaml(tmp_path, "- data\n- distill\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(path)


def test_section_that_is_not_a_mapping_is_rejected(tmp_path):
    path = write_yaml(tmp_path, "distill: 4\n")
    with pytest.raises(ConfigError, match="section 'distill' must be a mapping"):
        load_yaml(path)


def test_flags_override_yaml_and_other_yaml_values_persist(tmp_path):
    path = write_yaml(tmp_path, BASE_YAML)
    config = parse_config(["--temperature", "4", "--strategy", "mixed"], path)
    assert config.distill.temperature == 4.0
    assert config.distill.strategy == "mixed"
    assert config.distill.alpha == 0.3
    assert config.data.train_file == "train.tsv"
    assert config.data.text_column == "sentence"
    assert config.output_dir == "out"
    assert config.student.student_layers == [0, 5]


def test_list_flag_overrides_yaml_list(tmp_path):
    path = write_yaml(tmp_path, BASE_YAML)
    assert parse_config(["--student_layers", "1", "3"], path).student.student_layers == [1, 3]


def test_unknown_flag_is_a_config_error(tmp_path):
    path = write_yaml(tmp_path, BASE_YAML)
    with pytest.raises(ConfigError, match="unknown option '--temprature'"):
        parse_config(["--temprature", "4"], path)


def test_flag_of_wrong_type_is_a_config_error_not_an_exit(tmp_path):
    path = write_yaml(tmp_path, BASE_YAML)
    with pytest.raises(ConfigError, match="argument --temperature: invalid float value: 'abc'"):
        parse_config(["--temperature", "abc"], path)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--temperature", "0"], "temperature must be > 0, got 0.0"),
        (["--temperature", "-1"], "temperature must be > 0, got -1.0"),
        (["--temperature", "nan"], "temperature must be > 0, got nan"),
        (["--alpha", "1.5"], "alpha must be in [0, 1], got 1.5"),
        (["--alpha", "-0.1"], "alpha must be in [0, 1], got -0.1"),
        (["--strategy", "distill"], "strategy must be one of hard, soft, mixed, got 'distill'"),
    ],
)
def test_invalid_distillation_values(tmp_path, flags, fragment):
    path = write_yaml(tmp_path, BASE_YAML)
    with pytest.raises(ConfigError) as err:
        parse_config(flags, path)
    assert fragment in str(err.value)


def test_boundary_values_are_accepted(tmp_path):
    path = write_yaml(tmp_path, BASE_YAML)
    config = parse_config(["--alpha", "0", "--temperature", "0.5"], path)
    assert (config.distill.alpha, config.distill.temperature) == (0.0, 0.5)
    assert parse_config(["--alpha", "1"], path).distill.alpha == 1.0


def test_make_config_from_a_flat_dict():
    config = make_config({"train_file": "t.tsv", "strategy": "hard"}, temperature=3.0, student_layers=[1])
    assert config.data.train_file == "t.tsv"
    assert config.distill.strategy == "hard"
    assert config.distill.temperature == 3.0
    assert config.student.student_layers == [1]
    assert config.student.student_num_layers is None


def test_make_config_unknown_key():
    with pytest.raises(ConfigError) as err:
        make_config(train_file="t.tsv", temprature=3.0)
    assert "unknown config key 'temprature'" in str(err.value)
    assert "Did you mean temperature, temperature_schedule?" in str(err.value)


def test_make_config_needs_training_data():
    with pytest.raises(ConfigError, match="set train_file"):
        make_config(strategy="soft")


def test_negative_bool_flag_overrides_default_and_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  train_file: t.tsv\nteacher:\n  teacher_train: true\n", encoding="utf-8")
    assert parse_config([], str(path)).teacher.teacher_train is True
    assert parse_config(["--no_teacher_train"], str(path)).teacher.teacher_train is False
    assert parse_config(["--train_file", "t.tsv", "--no_teacher_train"]).teacher.teacher_train is False
    assert parse_config(["--train_file", "t.tsv"]).teacher.teacher_train is True


def test_teachers_list_and_objective_are_validated():
    from kdistill.config import teacher_list

    config = make_config(train_file="x.tsv", teacher_train=False,
                         teachers=[{"model": "a"}, {"model": "b", "weight": 3}])
    assert teacher_list(config.teacher) == [("a", 1.0), ("b", 3.0)]
    assert teacher_list(make_config(train_file="x.tsv", teacher_model="m").teacher) == [("m", 1.0)]
    with pytest.raises(ConfigError, match="set teacher_train: false"):
        make_config(train_file="x.tsv", teachers=[{"model": "a"}])
    with pytest.raises(ConfigError, match=r"teachers\[1\].weight must be a number > 0, got -1"):
        make_config(train_file="x.tsv", teacher_train=False, teachers=[{"model": "a"}, {"model": "b", "weight": -1}])
    assert config.teacher.ensemble_combine == "probabilities"
    assert make_config(train_file="x.tsv", ensemble_combine="logits").teacher.ensemble_combine == "logits"
    with pytest.raises(ConfigError, match="teacher: ensemble_combine must be one of probabilities, logits, got 'mean'"):
        make_config(train_file="x.tsv", ensemble_combine="mean")
    assert make_config(train_file="x.tsv", strategy="mixed", alpha=0.25).distill.objective_weights() == \
        {"soft_kl": 0.25, "hard_ce": 0.75}
    assert make_config(train_file="x.tsv", objective={"logit_mse": 2}).distill.objective_weights() == {"logit_mse": 2.0}
    with pytest.raises(ConfigError, match="unknown term 'kl'; valid terms: hard_ce, soft_kl, logit_mse"):
        make_config(train_file="x.tsv", objective={"kl": 1.0})
    with pytest.raises(ConfigError, match="task must be one of sequence_classification, image_classification"):
        make_config(train_file="x.tsv", task="ner")
