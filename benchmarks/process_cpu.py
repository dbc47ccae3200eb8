"""CPU seconds per Ray role while a benchmark runs: where the machine's cores go, next to the wall times.

A background thread samples the user + system CPU time of this process and every descendant (a local
Ray cluster's GCS, raylet and workers are children of the driver that started it) and names each
process by its Ray role from its title (``ray::RolloutActor.generate_parts`` -> ``RolloutActor``).
``window(t0, t1)`` gives each role's CPU seconds between two ``time.perf_counter()`` marks, so it lines
up with the loop's own step clock.
"""

from __future__ import annotations

import bisect
import os
import threading
import time

import psutil

ROLES = {"RewardRouter": "reward router", "RolloutWorker": "rollout actors", "LearnerWorker": "learner ranks",
         "ServeReplica": "reward replicas", "ProxyActor": "serve proxy", "ServeController": "serve controller",
         "raylet": "raylet", "gcs_server": "gcs", "ashboard": "dashboard"}
"""Title fragment -> role, first match wins (the router is a Serve replica too). Unmatched Ray processes (idle workers, dashboard, log monitor) are ``other``."""


def role_of(proc: psutil.Process, driver_pid: int) -> str:
    if proc.pid == driver_pid:
        return "driver"
    try:
        title = " ".join(proc.cmdline()[:2]) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "other"
    return next((role for key, role in ROLES.items() if key in title), "other")


class ProcessCpu:
    """Sample CPU seconds per process of this tree every ``interval_s`` until ``stop()``."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s, self.pid = interval_s, os.getpid()
        self.samples: list[tuple[float, dict[int, tuple[str, float]]]] = []
        self._roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="process-cpu")

    def __enter__(self) -> ProcessCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        root = psutil.Process(self.pid)
        out = {}
        for proc in [root, *root.children(recursive=True)]:
            try:
                cpu = proc.cpu_times()
                # A Ray worker's title changes with the task it runs: an idle worker becomes an actor.
                role = role_of(proc, self.pid)
                if role != "other" or proc.pid not in self._roles:
                    self._roles[proc.pid] = role
                out[proc.pid] = (self._roles[proc.pid], cpu.user + cpu.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def _run(self) -> None:
        own = 0.0
        while not self._stop.is_set():
            start = time.thread_time()
            now, snap = time.perf_counter(), self._snapshot()
            # This thread's own CPU is not the driver's: take it out of the driver's share.
            role, cpu = snap[self.pid]
            snap[self.pid] = (role, cpu - own)
            self.samples.append((now, snap))
            own += time.thread_time() - start
            self._stop.wait(self.interval_s)

    def at(self, t: float) -> dict[int, tuple[str, float]]:
        """CPU seconds of every process at ``t``, interpolated linearly between the samples around it."""
        times = [s[0] for s in self.samples]
        i = min(max(bisect.bisect_left(times, t), 1), len(times) - 1)
        (ta, a), (tb, b) = self.samples[i - 1], self.samples[i]
        frac = min(max((t - ta) / (tb - ta), 0.0), 1.0) if tb > ta else 1.0
        return {pid: (role, a.get(pid, (role, 0.0))[1] * (1 - frac) + cpu * frac) for pid, (role, cpu) in b.items()}

    def window(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds per role between ``t0`` and ``t1`` (``time.perf_counter()`` marks)."""
        if len(self.samples) < 2:
            return {}
        first, last = self.at(t0), self.at(t1)
        per_role: dict[str, float] = {}
        for pid, (role, cpu) in last.items():
            # A process started inside the window counts from zero; one that exited is lost (workers do
            # not exit in a steady window).
            per_role[role] = per_role.get(role, 0.0) + cpu - first.get(pid, (role, 0.0))[1]
        return per_role
