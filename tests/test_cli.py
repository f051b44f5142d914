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
