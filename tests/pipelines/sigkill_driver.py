"""A training driver that SIGKILLs itself, for the resume tests of ``test_failures.py``.

    python sigkill_driver.py CONFIG_JSON ATTEMPT RECORD_JSONL [--kill-after-step N | --kill-before-commit |
                                                               --kill-in-sweep]

``--kill-after-step N``: right after step N's metrics are staged (between checkpoints, when N is not
a checkpoint step); ``--kill-before-commit``: after the first checkpoint this attempt writes, before
its metrics are committed to MLflow; ``--kill-in-sweep``: in the final sweep, after its metrics and
table are logged. Every staged step also gets the metric ``probe/attempt`` and is
appended to RECORD_JSONL, so a test knows what each attempt computed without asking MLflow.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

from infra.config import Config
from infra.tracking import Tracker
from pipelines import train as train_mod


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("attempt", type=int)
    parser.add_argument("record")
    parser.add_argument("--kill-after-step", type=int)
    parser.add_argument("--kill-before-commit", action="store_true")
    parser.add_argument("--kill-in-sweep", action="store_true")
    args = parser.parse_args()
    cfg = Config.model_validate_json(Path(args.config).read_text())
    stage, commit = Tracker.stage_metrics, Tracker.commit_metrics

    def staged(self, metrics, step):
        metrics = {**{k: float(v) for k, v in metrics.items()}, "probe/attempt": float(args.attempt)}
        stage(self, metrics, step)
        with open(args.record, "a") as f:
            f.write(json.dumps({"attempt": args.attempt, "step": step, "metrics": metrics}) + "\n")
        if step == args.kill_after_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def committed(self):
        if args.kill_before_commit:
            os.kill(os.getpid(), signal.SIGKILL)
        commit(self)

    Tracker.stage_metrics, Tracker.commit_metrics = staged, committed
    if args.kill_in_sweep:
        train_mod.print_front = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    train_mod.train(cfg, resume=args.attempt > 1, progress=False)


if __name__ == "__main__":
    main()
