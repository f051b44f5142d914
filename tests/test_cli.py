"""The command line itself: help for the tool and for each verb."""

import subprocess
import sys

from kdistill.cli import main


def test_top_level_help_does_not_load_torch():
    code = "import sys, kdistill.cli as c; c.main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "teach,distill,eval,run,demo" in out
    assert out.strip().endswith("False")


def test_verb_help_lists_the_config_fields(capsys):
    assert main(["distill", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: kdistill distill" in out
    for flag in ("--temperature", "--strategy", "--student_layers", "--train_file", "--gradient_accumulation_steps"):
        assert flag in out


def test_verb_help_shows_kdistills_options_by_section_and_the_trainers_behind_help_all(capsys):
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    sections = [out.index(title) for title in ("data (DataConfig):", "teacher (TeacherConfig):",
                                               "student (StudentConfig):", "distill (kdistill's own):")]
    assert sections == sorted(sections)
    assert "--strategy STRATEGY" in out and "--train-file" not in out  # each flag once, by its field name
    assert "--lr_scheduler_type" not in out and "kdistill run --help-all lists them" in out
    assert len(out.splitlines()) < 300  # was 760 lines, most of them TrainingArguments' (254 with issue 16's fields)
    assert main(["run", "--help-all"]) == 0
    full = capsys.readouterr().out
    assert full.startswith(out.split("distill: transformers.TrainingArguments adds")[0])
    assert "--gradient_accumulation_steps" in full and "--lr_scheduler_type" in full


def test_a_negated_flag_says_what_it_does(capsys):
    assert main(["teach", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--no_teacher_train Sets teacher_train to false; --teacher_train is: Fine- tune teacher_model" in out
    from kdistill.config import parse_config

    assert parse_config(["--train_file", "x.tsv", "--no_teacher_train"]).teacher.teacher_train is False
