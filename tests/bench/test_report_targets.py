"""The report's target table reads the score ratio's 95% interval (success, or PushT's coverage paired over seeds):
a margin inside the interval is not a pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rtdp.bench.report import build_report, score_ratio, target_verdicts
from rtdp.metrics import score_summary, wilson_interval


def record(name: str, k: int, n: int, nfe: float, baseline: bool = False, reference: bool = False) -> dict:
    """A finished row record with the fields the report reads."""
    return {"status": "done", "run_id": "r1", "task": "pusht", "nfe_per_action": nfe, "actions_per_plan": 8.0,
            "row": {"name": name, "seed": 200000, "episodes": n, "baseline": baseline, "target_reference": reference},
            "score": {"success_rate": k / n, "n": n, "success_ci95": list(wilson_interval(k, n))},
            "seams": {"jerk_mean": None}, "timing": None}


def verdicts(*recs: dict) -> dict[str, str]:
    return {cells[0]: cells[3] for cells in target_verdicts(list(recs))}


def test_a_fast_row_meets_the_target_only_when_the_whole_interval_clears_95_percent():
    base = record("ddim10", 400, 500, 1.25, baseline=True)
    got = verdicts(base, record("close", 40, 50, 0.25), record("sure", 495, 500, 0.25), record("worse", 20, 50, 0.25))
    assert got == {"close": "not resolved (interval holds 0.95)", "sure": "met", "worse": "missed"}


def test_a_row_spending_more_than_a_third_of_the_references_nfe_fails_whatever_its_success():
    base = record("ddim10", 40, 50, 1.25, baseline=True)
    got = verdicts(base, record("ddpm100", 50, 50, 12.5), record("half", 50, 50, 0.6), record("third", 40, 50, 1.25 / 3))
    assert got == {"half": "NFE too high", "third": "not resolved (interval holds 0.95)"}  # ddpm100 spends more


def test_the_target_is_read_against_the_marked_reference_row_not_the_baseline():
    recs = [record("ddim10_chunk", 40, 50, 1.25, baseline=True), record("ddim10_step", 30, 50, 10.0, reference=True),
            record("sdp", 30, 50, 1.0)]
    assert verdicts(*recs) == {"ddim10_chunk": "met", "sdp": "not resolved (interval holds 0.95)"}


def test_rows_on_other_weights_are_left_out_of_the_target():
    other = record("lerobot_rti", 10, 50, 1.0)
    other["row"]["checkpoint"] = "lerobot:elsewhere"
    assert verdicts(record("ddim10", 40, 50, 1.25, baseline=True), other, record("rti", 40, 50, 0.4)) == {
        "rti": "not resolved (interval holds 0.95)"}


def test_no_reference_or_a_reference_without_success_gives_no_verdict():
    assert target_verdicts([record("a", 5, 10, 1.0), record("b", 5, 10, 0.1)]) == []
    assert verdicts(record("base", 0, 50, 1.25, baseline=True), record("fast", 3, 50, 0.25)) == {
        "fast": "reference never succeeds: no ratio"}


def test_the_report_states_the_target_table_under_its_group_in_markdown_and_html(tmp_path: Path):
    (tmp_path / "rows").mkdir()
    for rec in (record("ddim10", 40, 50, 1.25, baseline=True), record("rti", 10, 50, 0.25)):
        (tmp_path / "rows" / f"{rec['row']['name']}.json").write_text(json.dumps(rec))
    report = build_report(tmp_path).read_text()
    assert "Target: score >= 95% of `ddim10`'s at <= 1/3 of its 1.25 NFE per action" in report
    assert "| rti | 0.20 | 0.25 [0.14, 0.44] (success) | missed |" in report
    page = (tmp_path / "report.html").read_text()
    assert page.count("<table>") == 2 and "<td>missed</td>" in page and 'src="success_vs_compute.png"' in page


def coverage_record(name: str, coverages: np.ndarray, nfe: float, seed: int = 200000, **flags) -> dict:
    """A finished PushT row whose episodes keep their max coverage (none succeeds)."""
    episodes = [{"seed": seed + i, "success": False, "max_coverage": float(c)} for i, c in enumerate(coverages)]
    rec = record(name, 0, len(coverages), nfe, **flags)
    rec["row"]["seed"] = seed
    rec["episodes"], rec["score"] = episodes, score_summary(episodes)
    return rec


def test_pusht_rows_are_held_to_coverage_paired_over_their_shared_seeds():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.3, 1.0, 50)  # each seed's own difficulty, shared by every row that ran it
    ref = coverage_record("ddim10_step", difficulty, 10.0, reference=True)
    same = coverage_record("sdp", np.clip(difficulty + rng.normal(0, 0.01, 50), 0, 1), 1.0)
    worse_cov = np.clip(0.8 * difficulty + rng.normal(0, 0.01, 50), 0, 1)
    worse = coverage_record("rti", worse_cov, 1.0)
    got = {cells[0]: cells for cells in target_verdicts([ref, same, worse])}
    assert got["sdp"][3] == "met" and got["rti"][3] == "missed"  # no success anywhere, yet both are resolved
    assert got["sdp"][2].endswith("(coverage, paired)")
    r, lo, hi, how = score_ratio(worse, ref)
    assert r == worse_cov.mean() / difficulty.mean() and lo < r < hi < 0.95 and hi - lo < 0.03 and how.endswith("paired")
    elsewhere = coverage_record("rti_other_seeds", worse_cov, 1.0, seed=300000)  # no pairing possible
    r2, lo2, hi2, how2 = score_ratio(elsewhere, ref)
    assert how2 == "coverage" and r2 == r and hi2 - lo2 > 5 * (hi - lo)


def test_a_coverage_report_plots_and_tabulates_coverage_with_its_interval(tmp_path: Path):
    (tmp_path / "rows").mkdir()
    cov = np.linspace(0.5, 0.9, 20)
    for rec in (coverage_record("ddim10", cov, 1.25, baseline=True), coverage_record("sdp", cov, 0.25)):
        (tmp_path / "rows" / f"{rec['row']['name']}.json").write_text(json.dumps(rec))
    report = build_report(tmp_path).read_text()
    lo, hi = score_summary([{"success": False, "max_coverage": c} for c in cov])["coverage_ci95"]
    assert f"| 0.700 [{lo:.3f}, {hi:.3f}] |" in report and "| 1.00 [1.00, 1.00] (coverage, paired) | met |" in report
    plotted = json.loads((tmp_path / "success_vs_compute.json").read_text())
    assert plotted["groups"]["pusht"][1]["score"] == 0.7
