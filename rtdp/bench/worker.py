"""One suite row in its own process (`python -m rtdp.bench.worker ROW.json RESULT.json PROGRESS`, or a Ray task):
evaluate the checkpoint on the row's seeds, time batch-1 plans, and write the result only once all of it is
done, so a killed row leaves no result behind and is run again on `--resume`."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_row(row: dict[str, Any], report: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Evaluate one row (a `rtdp.bench.suite.Row` as a dict) and time it at batch 1; the row's result record.
    `report(n)` hears the number of episodes finished so far."""
    import torch

    from rtdp import metrics
    from rtdp.envs.evaluate import evaluate
    from rtdp.envs.timing import time_inference
    from rtdp.policy.loading import load_config, load_policy, resolve_checkpoint

    torch.set_num_threads(1)  # rows share the machine's cores: one thread each (two per core thrash)
    lerobot = row["checkpoint"].startswith("lerobot:")  # LeRobot's policy: the row names its env (suite checks)
    ckpt = row["checkpoint"] if lerobot else resolve_checkpoint(row["checkpoint"])
    env_cfg = {} if lerobot else load_config(ckpt).task.get("env", {})
    task = row["task"] or env_cfg.get("id")
    obs_mode = env_cfg.get("obs_mode") if row["task"] is None else row.get("obs_mode")
    max_steps = row["max_steps"] or (env_cfg.get("max_steps") if row["task"] is None else None)
    env_kwargs = {"only_task": row["only_task"]} if row["only_task"] else {}
    if row.get("env"):  # the task runs in an `rtdp serve-env` there (rtdp/envs/remote.py)
        env_kwargs["address"] = row["env"]
    policy = load_policy(ckpt, row["overrides"], backend=row["backend"], cache=row["cache"])
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if report is not None:
            report(done)

    torch.manual_seed(row["seed"])
    t0 = time.time()
    rec = evaluate(policy, task, n_episodes=row["episodes"], seed=row["seed"], n_envs=row["n_envs"],
                   obs_mode=obs_mode, max_steps=max_steps, progress=advance, env_kwargs=env_kwargs,
                   delay=row["delay"], execution=row["execution"])
    timing = None
    if row["timing_calls"]:
        timing = time_inference(policy, task, n_calls=row["timing_calls"], seed=row["seed"], obs_mode=obs_mode,
                                env_kwargs=env_kwargs, delay=row["delay"], execution=row["execution"])
    summary = rec["summary"]
    return metrics.record(
        "bench_row", row=row, status="done", task=task, started=t0, finished=time.time(),
        loadavg=list(os.getloadavg()), score=metrics.score_summary(rec["episodes"]),
        nfe_per_action=summary["nfe_per_action"], actions_per_plan=summary["actions_per_plan"],
        plans=summary["plans"], seams=summary["seams"], eval_wall_s=summary["wall_s"],
        success_per_task=summary.get("success_per_task"), timing=timing,
        episodes=[{k: e[k] for k in ("seed", "success", "length", "max_coverage", "task") if k in e}
                  for e in rec["episodes"]])


def main(argv: list[str]) -> int:
    row_path, result_path, progress_path = (Path(a) for a in argv)
    row = json.loads(row_path.read_text())
    from rtdp import metrics

    result = run_row(row, lambda done: progress_path.write_text(str(done)))
    result["run_id"] = os.environ.get("RTDP_BENCH_RUN_ID")
    metrics.write_json(result_path, result)  # atomic: a result on disk is a finished row
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
