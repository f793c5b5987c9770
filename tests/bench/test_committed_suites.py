"""The suites in benchmarks/suites are valid as committed: each loads, and each rtdp row's overrides apply to the
config its checkpoint's training recipe composes (a misspelt key or sampler is caught here, not an hour in)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtdp.bench.suite import load_suite
from rtdp.cli.train import compose_config
from rtdp.policy.loading import apply_overrides

SUITES = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "suites").glob("*.yaml"))


def recipes() -> dict[str, tuple[str, ...]]:
    """Checkpoint path -> the `train:` overrides some committed suite makes it with."""
    return {row.checkpoint: row.train for path in SUITES for row in load_suite(path).rows if row.train}


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_each_committed_suite_loads_and_its_rows_overrides_apply_to_their_checkpoints_recipe(path):
    known = recipes()
    for row in load_suite(path).rows:
        if row.checkpoint.startswith("lerobot:"):
            continue  # LeRobot's config, not rtdp's: tests/policy/test_lerobot_policy.py runs its samplers
        assert row.checkpoint in known, f"{path.name}: row {row.name}'s checkpoint has no train: recipe in any suite"
        cfg = compose_config(list(known[row.checkpoint]))
        applied = apply_overrides(cfg, row.overrides)
        for override in row.overrides:
            key, value = override.split("=", 1)
            if "." not in key:  # a config group: sampler=rti loads sampler/rti.yaml
                assert applied[key]["name"] == value, f"{path.name}: row {row.name}"


def test_the_suites_are_the_ones_the_docs_name():
    names = {p.stem for p in SUITES}
    assert {"pusht_keypoints", "pusht_image", "lerobot_pusht", "arm_lift", "arm_lift_rti_gripper", "robosuite_lift",
            "metaworld_mt10"} <= names
