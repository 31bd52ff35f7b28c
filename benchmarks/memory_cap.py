"""A hard memory cap for a subprocess tree: a child memory cgroup (v1, or v2 where delegated).

    ok, reason = MemoryCap.available()
    with MemoryCap(1500 * 2**20) as cap:
        proc = subprocess.Popen(cmd, preexec_fn=cap.preexec)   # starts inside the group
        proc.wait()
        print(cap.usage())   # {"peak_bytes", "failcnt", "oom_kills", "current_bytes", "resident_bytes"}

The group is created under this process's own memory cgroup (named with our pid), so
everything the subprocess starts (Ray's raylet, workers, object store pages) is charged to it
and the kernel reclaims or OOM-kills inside it when the limit is reached. Swap is capped to the
same limit (v1 ``memsw``) or to zero (v2 ``swap.max``), so the group cannot swap instead.
On exit nothing is moved: we wait for the group's processes to end (a stage's Ray shuts down
after the stage), end stragglers (ours: they were started inside this group), and remove it.
Callers must say loudly when :meth:`MemoryCap.available` is False: nothing is capped then.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_group() -> tuple[int, Path] | None:
    """(cgroup version, folder of this process's memory cgroup), or None when there is none we can see."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # v1 first: a hybrid host lists both, and then memory is a v1 controller
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            for base in (CGROUP_ROOT / "memory" / path.lstrip("/"), CGROUP_ROOT / "memory"):
                if (base / "memory.limit_in_bytes").exists():  # the second: a cgroup namespace shows its root
                    return 1, base
    for line in lines:
        if line.startswith("0::") and (CGROUP_ROOT / "cgroup.controllers").exists():
            base = CGROUP_ROOT / line[3:].lstrip("/")
            if base.is_dir():
                return 2, base
    return None


def _read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def _key_values(path: Path) -> dict[str, int]:
    """``memory.stat`` / ``memory.events`` / ``memory.oom_control``: one ``key value`` per line."""
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


class MemoryCap:
    """A child memory cgroup with a hard limit; ``limit_bytes`` None only measures (no limit)."""

    def __init__(self, limit_bytes: int | None, name: str | None = None):
        if limit_bytes is not None and limit_bytes < 16 * 2**20:
            raise ValueError(f"memory cap of {limit_bytes} bytes is too small to start a process (>= 16 MiB)")
        found = _own_group()
        if found is None:
            raise RuntimeError("no memory cgroup found for this process (see MemoryCap.available())")
        self.version, self.parent = found
        self.limit_bytes = limit_bytes
        self.path = self.parent / (name or f"mrlkit-cap-{os.getpid()}")
        self._procs_file = str(self.path / "cgroup.procs").encode()

    @staticmethod
    def available() -> tuple[bool, str]:
        """Whether a child memory cgroup can be created here, and why (not)."""
        found = _own_group()
        if found is None:
            return False, "no memory cgroup is visible in /proc/self/cgroup and /sys/fs/cgroup"
        version, parent = found
        if version == 2:
            try:
                delegated = "memory" in (parent / "cgroup.subtree_control").read_text().split()
            except OSError as exc:
                return False, f"cgroup v2 at {parent}: cannot read cgroup.subtree_control ({exc})"
            if not delegated:
                return False, f"cgroup v2 at {parent}: the memory controller is not enabled for child groups"
        probe = parent / f"mrlkit-cap-probe-{os.getpid()}"
        try:
            probe.mkdir()
        except OSError as exc:
            return False, f"cgroup v{version} at {parent} is not writable ({exc.strerror})"
        try:
            limit_file = "memory.limit_in_bytes" if version == 1 else "memory.max"
            if not os.access(probe / limit_file, os.W_OK):
                return False, f"cgroup v{version} at {parent}: {limit_file} of a child group is not writable"
        finally:
            probe.rmdir()
        return True, f"cgroup v{version} memory controller at {parent}"

    def __enter__(self) -> MemoryCap:
        self.path.mkdir()
        try:
            if self.limit_bytes is not None:
                self._set_limit(self.limit_bytes)
        except OSError:
            self.path.rmdir()
            raise
        return self

    def _set_limit(self, limit: int) -> None:
        if self.version == 1:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            memsw = self.path / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # memory+swap: the same limit, so pages cannot go to swap instead
                memsw.write_text(str(limit))
        else:
            (self.path / "memory.max").write_text(str(limit))
            swap = self.path / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")

    def preexec(self) -> None:
        """For ``subprocess.Popen(preexec_fn=...)``: move the new child into the group before it runs anything.

        Only os-level calls on a path computed beforehand: this runs between fork and exec.
        """
        fd = os.open(self._procs_file, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)

    def join(self, pid: int) -> None:
        """Move a running process into the group (its future children follow; existing ones do not)."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def usage(self) -> dict[str, Any]:
        """Peak and current charge (page cache included), resident = anon + shmem (not reclaimable without swap),
        how often the limit was hit (failcnt) and how many processes the kernel OOM-killed in the group."""
        p = self.path
        if self.version == 1:
            stat = _key_values(p / "memory.stat")
            oom = _key_values(p / "memory.oom_control")
            return {"peak_bytes": _read_int(p / "memory.max_usage_in_bytes"),
                    "current_bytes": _read_int(p / "memory.usage_in_bytes"),
                    "resident_bytes": stat.get("total_rss", 0) + stat.get("total_shmem", 0),
                    "failcnt": _read_int(p / "memory.failcnt"),
                    "oom_kills": oom.get("oom_kill")}  # None: this kernel does not report it
        stat = _key_values(p / "memory.stat")
        events = _key_values(p / "memory.events")
        peak = p / "memory.peak"  # kernel >= 5.19
        return {"peak_bytes": _read_int(peak) if peak.exists() else None,
                "current_bytes": _read_int(p / "memory.current"),
                "resident_bytes": stat.get("anon", 0) + stat.get("shmem", 0),
                "failcnt": events.get("max", 0), "oom_kills": events.get("oom_kill")}

    def __exit__(self, *exc_info: Any) -> None:
        self.wait_empty(grace_s=60.0)
        try:
            self.path.rmdir()
        except OSError as exc:
            message = f"memory_cap: could not remove cgroup {self.path}: {exc}; remove it with rmdir"
            print(message, file=sys.stderr, flush=True)
            if exc_info[0] is None:
                raise RuntimeError(message) from exc

    def wait_empty(self, grace_s: float) -> None:
        """Wait for the group's processes to end; after ``grace_s``, kill what is left (it was started in here)."""
        deadline = time.monotonic() + grace_s
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = self.pids()
        if not left:
            return
        print(f"memory_cap: {len(left)} process(es) still in {self.path} after {grace_s:.0f}s, killing them: "
              f"{left}", file=sys.stderr, flush=True)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10.0
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
