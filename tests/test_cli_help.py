"""`edge-sel finetune --help` and `pretrain --help` list every option once, under a heading."""

import re

import pytest
from click.testing import CliRunner

from helpers import run_main
from edge_sel.cli import cli

FINETUNE_HEADINGS = ["Checkpoint and output", "Data", "Training", "Against forgetting", "Method (which samples)",
                     "Gate (", "SEL curriculum", "Sparse update", "Energy and temperature", "Speed"]
NIGHT_HEADINGS = ["Home", "Output and judging", *FINETUNE_HEADINGS[1:]]
PRETRAIN_HEADINGS = ["Model and output", "What devices get with the checkpoint", "From pretrained weights", "Data", "Training", "Energy and temperature", "Speed"]


@pytest.mark.parametrize("command, headings", [("finetune", FINETUNE_HEADINGS), ("pretrain", PRETRAIN_HEADINGS),
                                               ("night", NIGHT_HEADINGS)])
def test_help_lists_every_option_once_under_its_heading(command, headings):
    result = CliRunner().invoke(cli, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    found = [m.group(1) for line in lines if (m := re.match(r"^  (\S.*):\s*$", line))]
    # In this order, and nothing else (no "Other options": every option is placed under a heading).
    assert len(found) == len(headings) and all(f.startswith(h) for f, h in zip(found, headings)), found
    params = [p for p in cli.commands[command].params if p.expose_value and p.name != "profile"]
    for p in params:
        flag = max(p.opts, key=len)
        listed = [line for line in lines if re.match(rf"^    {re.escape(flag)}( |$|/| /)", line.replace(", ", " "))]
        assert len(listed) == 1, (flag, listed)
    assert max(len(line) for line in lines) <= 100


@pytest.mark.parametrize("group", ["bench", "fleet", "profiles"])
def test_a_group_without_a_command_prints_its_help_not_an_error(group, capsys):
    code, err = run_main([group], capsys)
    assert code == 2
    assert err.startswith(f"Usage: edge-sel {group} ") and "Commands:" in err and "error" not in err.splitlines()[0]
