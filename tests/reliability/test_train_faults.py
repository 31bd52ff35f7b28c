"""Training faults: the S3 endpoint goes away mid-run, the worker dies again and again, the driver is killed,
another Ray starts and stops on the machine.

Each fault must end in a finished, exported run whose checkpoints are complete, and
cost no more than one checkpoint interval of training per crash. Tiny random-init
model and ~100 made-up pairs (helpers from tests/integration/test_train_stage.py),
1 worker: what is checked is recovery, not learning.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from mrlkit import layout, storage
from mrlkit.models import read_metadata
from mrlkit.stage import run_stage
from mrlkit.testing.faults import S3Outage, verify_published
from mrlkit.train.launch import CRASH_ENV, TrainStage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from test_train_stage import checkpoint_dirs, tiny_config, trainer_state, write_pairs

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it kept
OUTAGE_S = 8  # longer than a checkpoint save, so the outage always spans a checkpoint upload and snapshot write
CRASH_SEED = 8  # crash steps are drawn from this seed and recorded with the figure


def snapshot_checkpoints(run_uri: str) -> list[str]:
    """The checkpoint folder names Ray Train's snapshot lists as kept (what a resume would trust)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "checkpoint_dir_name" and isinstance(value, str):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(storage.read_json(storage.join(run_uri, SNAPSHOT)))
    return sorted(set(found))


def checkpoint_time(name: str) -> float:
    """The wall-clock time in a Ray checkpoint folder's name, ``checkpoint_2026-11-23_22-30-06.739057``."""
    stamp = name.removeprefix("checkpoint_")
    return datetime.strptime(stamp, "%Y-%m-%d_%H-%M-%S.%f").timestamp()


def checkpoint_problems(checkpoint_uri: str) -> list[str]:
    """What is missing or unreadable in one kept checkpoint (the weights and the trainer state must load)."""
    from safetensors.torch import load as load_safetensors

    hf = storage.join(checkpoint_uri, "checkpoint")
    problems = []
    try:
        state = storage.read_json(storage.join(hf, "trainer_state.json"))
        if int(state["global_step"]) < 1:
            problems.append(f"{checkpoint_uri}: trainer_state.json has no step")
    except (storage.StorageError, ValueError, KeyError) as exc:
        problems.append(f"{checkpoint_uri}: trainer_state.json unreadable ({exc})")
    try:
        if not load_safetensors(storage.read_bytes(storage.join(hf, "model.safetensors"))):
            problems.append(f"{checkpoint_uri}: model.safetensors holds no tensors")
    except Exception as exc:  # any failure to read or parse the weights is a lost object
        problems.append(f"{checkpoint_uri}: model.safetensors unreadable ({exc})")
    return problems


# -- 1. the S3 endpoint goes away while training writes checkpoints ---------------------------------------------


@pytest.mark.slow
def test_training_survives_s3_outage_and_keeps_complete_checkpoints(ray_local, rclone_server, s3_root, tiny_model,
                                                                    monkeypatch, capfd, figures):
    # The session's server, not a private one: the local Ray's controller and workers were started with its
    # endpoint in their environment (as pods get it from a Secret) and reach storage through it.
    monkeypatch.setenv("MRLKIT_STORAGE_ATTEMPTS", "5")  # pyarrow: ~9s of retries per request; boto3: ~7s
    cfg = tiny_config(s3_root, tiny_model, run="outage", num_workers=1, max_steps=16, eval_steps=2,
                      keep_checkpoints=20)  # keep every checkpoint, to show one was written during the outage
    write_pairs(layout.pairs_uri(cfg))
    bucket, prefix = s3_root.removeprefix("s3://").split("/", 1)
    snapshot_on_disk = rclone_server.data_dir / bucket / prefix / "runs" / cfg.run / SNAPSHOT

    with S3Outage(rclone_server, seconds=OUTAGE_S, trigger=snapshot_on_disk.is_file) as outage:
        summary = run_stage(TrainStage, cfg)
        finished = time.monotonic()

    assert outage.fired and outage.restarted_at is not None and outage.restarted_at < finished
    # Ray names a checkpoint folder by the wall-clock time it is reported; one named inside the outage was
    # uploaded (and Ray's snapshot rewritten) while the endpoint was down, so the outage really hit a write.
    wall = time.time() - time.monotonic()
    during = [d for d in checkpoint_dirs(layout.run_uri(cfg))
              if outage.stopped_at + wall <= checkpoint_time(d) <= outage.restarted_at + wall]
    assert during, f"no checkpoint was written during the outage: {checkpoint_dirs(layout.run_uri(cfg))}"
    output = capfd.readouterr()
    retries = len(re.findall(r"retrying", output.out + output.err))  # driver and (via Ray) worker log lines
    assert summary["global_step"] == 16 and summary["already_finished"] is False
    run_uri = layout.run_uri(cfg)
    kept = snapshot_checkpoints(run_uri)
    assert kept, "Ray Train's snapshot lists no checkpoint"
    lost = verify_published(layout.model_uri(cfg))
    assert storage.is_published(layout.model_uri(cfg))
    for name in kept:
        lost += checkpoint_problems(storage.join(run_uri, name))
    figures("fault.s3_outage_during_training", f"rclone S3 stopped {OUTAGE_S}s once Ray Train's first checkpoint was "
            "recorded, then restarted, while a 1-worker run of 16 steps saved every 2; export verified against "
            "its marker, every checkpoint the snapshot lists read back (weights + trainer state)", 1, len(lost),
            problems=lost, checkpoints=len(kept), checkpoints_written_during_outage=len(during), retries=retries)
    assert not lost, lost


# -- 2. the training worker dies at several steps of one run ----------------------------------------------------


def crash_steps(max_steps: int, crashes: int, seed: int = CRASH_SEED) -> list[int]:
    """Distinct steps inside the run (never the last, so every crash leaves work to resume), in order."""
    return sorted(random.Random(seed).sample(range(1, max_steps), crashes))


def marker_steps(marker: Path) -> tuple[int, int]:
    """(step the worker crashed at, step its replacement resumed at), as the crash hook wrote them."""
    text = marker.read_text()
    crashed = re.search(r"crashed at step (\d+)", text)
    resumed = re.search(r"resumed at step (\d+)", text)
    assert crashed and resumed, f"{marker}: {text!r}"
    return int(crashed.group(1)), int(resumed.group(1))


def test_crash_steps_are_seeded_distinct_and_inside_the_run():
    steps = crash_steps(12, 3)
    assert steps == crash_steps(12, 3) and len(set(steps)) == 3 and all(1 <= s < 12 for s in steps)
    assert crash_steps(12, 3, seed=CRASH_SEED + 1) != steps or crash_steps(12, 3, seed=CRASH_SEED + 2) != steps


@pytest.mark.slow
def test_worker_killed_at_several_steps_resumes_each_time_from_last_checkpoint(ray_local, tmp_path, tiny_model,
                                                                               monkeypatch, figures):
    interval, max_steps = 2, 12
    cfg = tiny_config(str(tmp_path / "root"), tiny_model, run="crashes", num_workers=1, max_steps=max_steps,
                      eval_steps=interval, max_failures=3)
    write_pairs(layout.pairs_uri(cfg))
    steps = crash_steps(max_steps, 3)
    markers = [tmp_path / f"crash-{i}" for i in range(len(steps))]
    monkeypatch.setenv(CRASH_ENV, ",".join(f"{s}@{m}" for s, m in zip(steps, markers, strict=True)))

    summary = run_stage(TrainStage, cfg)

    crashed_resumed = [marker_steps(m) for m in markers]
    assert [c for c, _ in crashed_resumed] == steps  # every crash fired, once, where asked
    redone = [c - r for c, r in crashed_resumed]
    assert summary["global_step"] == max_steps
    assert summary["resumed_from_step"] == crashed_resumed[-1][1]
    newest = max(checkpoint_dirs(layout.run_uri(cfg)),
                 key=lambda d: trainer_state(storage.join(layout.run_uri(cfg), d))["global_step"])
    assert trainer_state(storage.join(layout.run_uri(cfg), newest))["global_step"] == max_steps
    assert storage.is_published(layout.model_uri(cfg))
    figures("fault.worker_killed_repeatedly", f"the only training worker exited at steps {steps} (seed "
            f"{CRASH_SEED}) of a {max_steps}-step run saving every {interval}, max_failures=3; each replacement "
            "resumed from the newest checkpoint and the run finished and exported", len(steps), 0,
            crash_steps=steps, steps_redone=redone, checkpoint_interval=interval)
    assert all(0 <= r <= interval for r in redone), (crashed_resumed, interval)


# -- 3. the driver is killed and the same command is run again --------------------------------------------------


def group_members(pgid: int) -> list[str]:
    """Live processes of a process group (the CLI's driver, its local Ray: gcs_server, raylet, workers)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(text.split(" ", 1)[1].rsplit(")", 1)[0].lstrip("("))
    return members


def kill_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGKILL the whole group and wait until none of it (no raylet, no gcs_server) is left."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_members(proc.pid), f"left running after the kill: {group_members(proc.pid)}"


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", CRASH_ENV)}
    # The CLI starts its own local Ray in its own temp dir, never joining the one this test session uses.
    return {**env, "RAY_TMPDIR": str(Path("/tmp") / f"mrlkit-kill-{os.getpid()}"), "PYTHONUNBUFFERED": "1"}


def summary_of(stdout: str) -> dict[str, Any]:
    """The JSON summary ``mrlkit train`` prints last."""
    return json.loads(stdout[stdout.index("{"):stdout.rindex("}") + 1])


def run_cli(cmd: list[str], env: dict[str, str], log_path: Path, timeout: float = 300) -> dict[str, Any]:
    with log_path.open("wb") as log:
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=log, timeout=timeout,
                              start_new_session=True, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, f"exit {done.returncode}\n{out[-2000:]}\n{log_path.read_text()[-4000:]}"
    return summary_of(out)


@pytest.mark.slow
def test_killed_driver_resumes_when_the_same_command_runs_again(tmp_path, tiny_model, figures, request):
    root = tmp_path / "root"
    config = {"name": "tiny", "run": "killed", "storage": {"root": str(root)}, "ray": {"num_cpus": 2},
              "train": {"base_model": tiny_model, "matryoshka_dims": [32, 16, 8], "batch_size": 16,
                        "learning_rate": 1e-3, "warmup_ratio": 0.0, "eval_strategy": "steps", "eval_steps": 2,
                        "max_steps": 12, "num_workers": 1, "max_failures": 0}}
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cfg = tiny_config(str(root), tiny_model, run="killed", num_workers=1)
    write_pairs(layout.pairs_uri(cfg))
    run_dir = Path(layout.run_uri(cfg))
    cmd = [str(Path(sys.executable).with_name("mrlkit")), "train", "--config", str(config_path)]
    env = cli_env(tmp_path)
    request.addfinalizer(lambda: shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True))

    with (tmp_path / "first.log").open("wb") as log:
        first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while not (run_dir / SNAPSHOT).is_file():  # the first checkpoint is recorded
                assert first.poll() is None, f"exited {first.returncode} early:\n{(tmp_path / 'first.log').read_text()}"
                assert time.monotonic() < deadline, "no checkpoint within 240s"
                time.sleep(0.2)
        finally:
            kill_group(first)
    assert not storage.is_published(layout.model_uri(cfg))
    killed_at = max(trainer_state(str(run_dir / d))["global_step"] for d in snapshot_checkpoints(str(run_dir)))

    resumed = run_cli(cmd, env, tmp_path / "second.log")
    assert resumed["already_finished"] is False and resumed["global_step"] == 12
    assert resumed["resumed_from_step"] == killed_at > 0, (resumed, killed_at)  # the newest recorded checkpoint
    assert not verify_published(layout.model_uri(cfg))

    kept = checkpoint_dirs(str(run_dir))
    again = run_cli(cmd, env, tmp_path / "third.log")
    # A no-op: it reports the export (whose step is the best checkpoint's, not necessarily the last) and trains nothing.
    exported = read_metadata(layout.model_uri(cfg))
    assert again["already_finished"] is True and again["model"] == resumed["model"]
    assert again["global_step"] == exported.training["global_step"] and exported.training["run"] == "killed"
    assert checkpoint_dirs(str(run_dir)) == kept
    figures("fault.driver_killed_and_resubmitted", "`mrlkit train` (own local Ray) SIGKILLed with its whole process "
            "group once its first checkpoint was recorded; the same command resumed from the checkpoint and "
            "exported, a third run reported the existing result", 1, 0,
            checkpoint_step_at_kill=killed_at, resumed_from_step=resumed["resumed_from_step"])


# -- 4. another Ray starts and stops on the same machine during a run -------------------------------------------

ANOTHER_RAY = ("import ray, sys, time; ray.init(num_cpus=1, include_dashboard=True, log_to_driver=False); "
               "time.sleep(float(sys.argv[1])); ray.shutdown()")


def wait_for_file(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout_s:.0f}s")
        time.sleep(0.2)


@pytest.mark.slow
def test_another_ray_on_the_machine_does_not_stop_a_local_run(ray_local, tmp_path, figures):
    """With Ray's own trainer on a Ray of our own, Ray Train's placement-group cleaner asked the state API of a
    Ray started beside it about its controller, was told it did not exist, and removed the live run's workers
    (mrlkit.train.local_ray; reproduced by hand with Ray's TorchTrainer). The stage's local trainer has no
    cleaner: a run with no failures allowed must outlive another Ray starting and stopping."""
    import threading

    import ray.train

    from mrlkit.train.local_ray import LocalTorchTrainer

    started, other_gone = tmp_path / "started", tmp_path / "other-gone"

    def train_until_the_other_ray_is_gone(config: dict) -> None:  # runs in a Ray worker: stdlib names only
        import os as os_
        import time as time_

        open(config["started"], "w").close()
        deadline = time_.monotonic() + 180
        while not os_.path.exists(config["other_gone"]) and time_.monotonic() < deadline:
            time_.sleep(0.2)

    def another_ray() -> None:
        wait_for_file(started, 120)  # the run's helpers are up and watching before the other Ray appears
        subprocess.run([sys.executable, "-c", ANOTHER_RAY, "6"], check=True, timeout=150,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        other_gone.touch()

    beside = threading.Thread(target=another_ray, daemon=True)
    beside.start()
    trainer = LocalTorchTrainer(
        train_until_the_other_ray_is_gone,
        train_loop_config={"started": str(started), "other_gone": str(other_gone)},
        scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(name="beside", storage_path=str(tmp_path / "runs"),
                                       failure_config=ray.train.FailureConfig(max_failures=0)))
    result = trainer.fit()  # a removed placement group kills the worker: with no failures allowed, fit raises
    beside.join(timeout=60)
    assert result.error is None and other_gone.exists()
    figures("fault.another_ray_beside_a_local_run", "a second Ray (with a dashboard, so a state API) started and "
            "stopped on the machine while a local run allowing no failures trained", 1, 0)
