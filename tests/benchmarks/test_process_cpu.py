"""The benchmarks' CPU accounting attributes a child's CPU seconds to it, and not the sampler's own."""

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from process_cpu import ProcessCpu  # noqa: E402

BURN = ("import time\n"
        "while time.process_time() < 0.6: pass\n"
        "print('done', flush=True)\n"
        "time.sleep(30)\n")


def test_child_cpu_is_counted_once():
    with ProcessCpu(interval_s=0.05) as cpu:
        t0 = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "done"
            t1 = time.perf_counter()
            time.sleep(0.3)  # a sample after t1, while the child still lives
        finally:
            child.kill()
            child.wait()
    per_role = cpu.window(t0, t1)
    # 0.6 s of the child's own loop plus its interpreter start-up (~0.1 s); the interpolation between
    # samples 0.05 s apart errs by at most one interval of one busy process at either end.
    assert 0.5 <= per_role["other"] <= 1.0
    # The driver (this process) mostly waits on a pipe; the sampler thread's CPU is taken out of it.
    assert per_role["driver"] < 0.3
