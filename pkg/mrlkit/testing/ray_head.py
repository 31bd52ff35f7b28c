"""A local Ray head for ``ray job submit``, with token authentication on (``make ray-start``).

Ray's jobs API without authentication lets anyone who can reach the port run
code, so the head always starts with ``RAY_AUTH_MODE=token`` and a fresh random
token in a file only the owner can read. ``stop()`` ends exactly this head (its
process group), never other Ray instances on the machine as ``ray stop`` would::

    python -m mrlkit.testing.ray_head start [--state .ray-head]   # prints how to submit
    python -m mrlkit.testing.ray_head stop  [--state .ray-head]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from mrlkit.errors import MrlkitError
from mrlkit.testing.s3_server import free_ports


class LocalRayHead:
    """A ``ray start --head`` whose state (token, ports, process group) lives in ``state_dir``."""

    def __init__(self, state_dir: str | Path, num_cpus: int = 2, port: int | None = None,
                 dashboard_port: int | None = None):
        self.state_dir = Path(state_dir).resolve()
        self.num_cpus = num_cpus
        picked = iter(free_ports(2, avoid={p for p in (port, dashboard_port) if p}))
        self.port = port or next(picked)
        self.dashboard_port = dashboard_port or next(picked)
        self.pgid: int | None = None

    @property
    def token_path(self) -> Path:
        return self.state_dir / "auth_token"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """What a client needs to submit jobs to this head (the token by file path, never by value)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path), "RAY_ADDRESS": self.address}

    def start(self, env: dict[str, str] | None = None, timeout: float = 120) -> LocalRayHead:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        # Ray's socket paths must stay short (AF_UNIX limit), so its temp dir is a short path under /tmp.
        temp_dir = Path("/tmp") / f"mrlkit-ray-{self.port}"
        agent_port, client_port = free_ports(2, avoid={self.port, self.dashboard_port})
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={self.port}",
               f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1", f"--num-cpus={self.num_cpus}",
               # Ray's fixed defaults (job agent 52365, client server 10001) collide with any other Ray on
               # the machine, and a head whose job agent cannot bind refuses every `ray job submit`.
               f"--dashboard-agent-listen-port={agent_port}", f"--ray-client-server-port={client_port}",
               f"--temp-dir={temp_dir}", "--disable-usage-stats"]
        full_env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}
        log = self.state_dir / "ray-start.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.pgid = proc.pid
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop()
                raise MrlkitError(f"ray start did not finish within {timeout:.0f}s; see {log}") from None
        if code != 0:
            self.stop()
            raise MrlkitError(f"ray start failed (exit {code}); see {log}")
        (self.state_dir / "head.json").write_text(json.dumps(
            {"pgid": self.pgid, "port": self.port, "dashboard_port": self.dashboard_port}))
        return self

    @classmethod
    def attach(cls, state_dir: str | Path) -> LocalRayHead:
        state = json.loads((Path(state_dir) / "head.json").read_text())
        head = cls(state_dir, port=state["port"], dashboard_port=state["dashboard_port"])
        head.pgid = state["pgid"]
        return head

    def stop(self) -> None:
        if self.pgid is None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    os.killpg(self.pgid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                continue
            break
        self.pgid = None
        (self.state_dir / "head.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="start/stop a local Ray head with token auth")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--state", default=".ray-head", help="folder for the token and the head's pids")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--dashboard-port", type=int, default=8265)
    args = parser.parse_args(argv)
    try:
        if args.action == "stop":
            if not (Path(args.state) / "head.json").is_file():
                print(f"no head started from {args.state}")
                return 0
            LocalRayHead.attach(args.state).stop()
            print("ray head stopped")
            return 0
        head = LocalRayHead(args.state, args.num_cpus, args.port, args.dashboard_port).start()
    except MrlkitError as exc:
        print(f"mrlkit: error: {exc}", file=sys.stderr)
        return 2
    env = " ".join(f"{k}={v}" for k, v in head.client_env().items())
    print(f"Ray head on {head.address} with token authentication (token file {head.token_path}).")
    print(f"Submit:  {env} .venv/bin/ray job submit --working-dir . -- \\\n"
          "           python ray_jobs/prepare.py --config ray_jobs/configs/demo.yaml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
