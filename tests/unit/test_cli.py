"""The `mrlkit` command: help, config validation, one clear error line for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mrlkit.cli import STAGES, main


def test_config_command_prints_resolved_config(capsys):
    assert main(["config", "name=demo", "train.epochs=1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "demo" and out["run"] == "demo" and out["train"]["epochs"] == 1.0


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["config", "name=x", "train.batchsize=2"], "mrlkit: error: train.batchsize: unknown key"),
        (["config", "--config", "no-such.yaml"], "mrlkit: error: config file 'no-such.yaml' does not exist"),
        (["config"], "mrlkit: error: name: required"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(says) and "Traceback" not in err


def test_every_stage_is_a_subcommand():
    help_text = subprocess.run([sys.executable, "-m", "mrlkit.cli", "--help"], capture_output=True, text=True).stdout
    for stage in [*STAGES, "config", "k8s"]:
        assert stage in help_text


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "mrlkit.cli", "--version"], capture_output=True, text=True)
    assert out.stdout.startswith("mrlkit ")
