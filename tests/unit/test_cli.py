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


def _ray_task_failed_with(cause: BaseException) -> BaseException:
    """What ``ray.get`` raises when a task raised ``cause``: Ray's wrapper, itself an instance of the cause's type."""
    from ray.exceptions import RayTaskError

    return RayTaskError("write_block", "Traceback (most recent call last): ...", cause).as_instanceof_cause()


def test_disk_full_error_is_found_behind_ray_and_chained_exceptions():
    import errno

    from mrlkit.errors import disk_full_error

    full = OSError(errno.ENOSPC, "No space left on device", "/tmp/mrlkit-prepare-x/staging.arrow")
    try:
        try:
            raise _ray_task_failed_with(full)
        except Exception as exc:
            raise RuntimeError("the dataset failed") from exc
    except RuntimeError as outer:
        assert disk_full_error(outer) is full
    arrow_style = OSError("[Errno 28] No space left on device; while writing")  # pyarrow: no errno attribute
    assert disk_full_error(_ray_task_failed_with(arrow_style)) is not None
    assert disk_full_error(RuntimeError("boom")) is None
    assert disk_full_error(OSError(errno.EACCES, "Permission denied")) is None


def test_a_full_disk_anywhere_in_a_stage_is_one_error_line(monkeypatch, capsys):
    import errno

    import mrlkit.stage

    def stage_filling_the_disk(stage_cls, cfg):
        full = OSError(errno.ENOSPC, "No space left on device", "/tmp/mrlkit-prepare-x/chunks.arrow")
        raise RuntimeError("dataset execution failed") from _ray_task_failed_with(full)

    monkeypatch.setattr(mrlkit.stage, "run_stage", stage_filling_the_disk)
    assert main(["prepare", "name=x", "corpus.input=."]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("mrlkit: error: No space left on device writing /tmp/mrlkit-prepare-x/chunks.arrow")
    assert "GB free now" in err[0] and "TMPDIR" in err[0]

    def stage_with_a_bug(stage_cls, cfg):
        raise KeyError("a bug keeps its traceback")

    monkeypatch.setattr(mrlkit.stage, "run_stage", stage_with_a_bug)
    with pytest.raises(KeyError):
        main(["prepare", "name=x", "corpus.input=."])
