"""The report of a results folder, from its saved JSON alone: `report.md` (and the same as `report.html`) with one
table per task (success with Wilson 95% intervals, NFE per action, batch-1 latency, replanning interval, seam
jerk, ratios to the group's baseline, the fast-sampler target) and `success_vs_compute.png`. Speed ratios are
given only between rows measured in one run. Rows are compared on their task score: PushT's mean max-coverage
(success is rare there, so its ratios say little), else the success rate."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from rtdp import metrics

# The fast-sampler target of issue 19: >= 95% of plain DDIM-10's score at <= 1/3 of its NFE per executed action.
TARGET_SUCCESS_RATIO, TARGET_NFE_RATIO = 0.95, 1 / 3
TARGET_COLUMNS = ("row", "NFE ÷ reference", "score ÷ reference [95% CI]", "verdict")
COLUMNS = ("row", "seeds", "success [95% CI]", "coverage [95% CI]", "NFE / action", "plan p50 / p99 (ms)",
           "ms / step", "actions / plan", "seam jerk", "score ÷ baseline [95% CI]", "ms / step ÷ baseline")


def load_results(results: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The row records (`rows/*.json`) and run records (`runs/*.json`) of a results folder."""
    results = Path(results)
    if not (results / "rows").is_dir():
        raise FileNotFoundError(f"{results} holds no rows/ folder: not a `rtdp bench` results folder")
    rows = [json.loads(p.read_text()) for p in sorted((results / "rows").glob("*.json"))]
    runs = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
    return rows, runs


def group_of(rec: dict[str, Any]) -> str:
    return rec["row"].get("group") or rec.get("task") or rec["row"].get("task") or "(task unknown)"


def _successes(rec: dict[str, Any]) -> tuple[int, int]:
    score = rec["score"]
    return round(score["success_rate"] * score["n"]), int(score["n"])


def _by_coverage(rec: dict[str, Any]) -> bool:
    """Whether a row is scored by mean max-coverage: its summary has one and its episodes keep theirs."""
    eps = rec.get("episodes") or []
    return rec["score"].get("mean_max_coverage") is not None and len(eps) >= 2 and all("max_coverage" in e for e in eps)


def score_ratio(rec: dict[str, Any], ref: dict[str, Any]) -> tuple[float, float, float, str] | None:
    """`rec`'s task score over `ref`'s with its 95% interval and how it was read: mean max-coverage by a paired
    bootstrap where both rows ran the same seeds (an independent one otherwise), else success by Katz's interval.
    None where the reference scores 0."""
    if _by_coverage(rec) and _by_coverage(ref):
        a, b = metrics.episode_scores(rec["episodes"]), metrics.episode_scores(ref["episodes"])
        if not sum(b) > 0:
            return None
        paired = sorted(e["seed"] for e in rec["episodes"]) == sorted(e["seed"] for e in ref["episodes"])
        return (*metrics.paired_ratio_interval(a, b, paired=paired), "coverage" + (", paired" if paired else ""))
    k0, n0 = _successes(ref)
    if k0 == 0:
        return None
    return (*metrics.ratio_interval(*_successes(rec), k0, n0), "success")


def _score_point(rec: dict[str, Any]) -> tuple[float, float, float]:
    """The task score with its 95% interval: mean max-coverage (t interval) where the row has it, else success
    (Wilson)."""
    score = rec["score"]
    if score.get("mean_max_coverage") is not None and score.get("coverage_ci95"):
        return score["mean_max_coverage"], *score["coverage_ci95"]
    k, n = _successes(rec)
    return k / n, *score["success_ci95"]


def _ms_per_step(rec: dict[str, Any]) -> float | None:
    return rec["timing"]["wall_ms_per_step"] if rec.get("timing") else None


def table_rows(recs: list[dict[str, Any]]) -> list[list[str]]:
    """One group's table: finished rows with their figures, missing and failed rows with why."""
    base = next((r for r in recs if r["row"].get("baseline") and r.get("status") == "done"), None)
    out = []
    for rec in recs:
        row = rec["row"]
        seeds = f"{row['seed']}–{row['seed'] + row['episodes'] - 1} ({row.get('seed_role', 'report')})"
        if rec.get("status") != "done":
            out.append([row["name"], seeds, f"{rec.get('status')}: {rec.get('why', '')}"] + [""] * (len(COLUMNS) - 3))
            continue
        k, n = _successes(rec)
        lo, hi = rec["score"]["success_ci95"]
        cov = rec["score"].get("mean_max_coverage")
        cov_ci = rec["score"].get("coverage_ci95")
        t = rec.get("timing")
        ratio, speed = "", ""
        if base is not None and rec is not base:
            got = score_ratio(rec, base)
            ratio = "" if got is None else f"{got[0]:.2f} [{got[1]:.2f}, {got[2]:.2f}] ({got[3]})"
            if _ms_per_step(rec) and _ms_per_step(base):
                speed = (f"{_ms_per_step(rec) / _ms_per_step(base):.2f}" if rec.get("run_id") == base.get("run_id")
                         else "other run")
        name = row["name"] + (" (baseline)" if rec is base else "")
        out.append([name, seeds, f"{k / n:.2f} [{lo:.2f}, {hi:.2f}]",
                    "" if cov is None else f"{cov:.3f}" + (f" [{cov_ci[0]:.3f}, {cov_ci[1]:.3f}]" if cov_ci else ""),
                    f"{rec['nfe_per_action']:.2f}",
                    f"{t['latency']['p50_ms']:.1f} / {t['latency']['p99_ms']:.1f}" if t else "",
                    f"{t['wall_ms_per_step']:.2f}" if t else "", f"{rec['actions_per_plan']:.1f}",
                    f"{rec['seams']['jerk_mean']:.3g}" if rec["seams"].get("jerk_mean") is not None else "",
                    ratio, speed])
    return out


def target_reference(recs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished row the fast-sampler target is read against: the one marked `target_reference`, else the
    group's baseline."""
    done = [r for r in recs if r.get("status") == "done"]
    return (next((r for r in done if r["row"].get("target_reference")), None)
            or next((r for r in done if r["row"].get("baseline")), None))


def target_verdicts(recs: list[dict[str, Any]]) -> list[list[str]]:
    """Each finished row of a group on the reference's checkpoint (a sampler is held to its own weights) that
    spends less NFE per action than the reference, against the target. The verdict reads the score ratio's 95%
    interval (`score_ratio`): `met` when its lower end is >= 0.95, `missed` when its upper end is below 0.95,
    `not resolved` when the interval holds 0.95 (more seeds are needed to tell), and `NFE too high` above a third
    of the reference's NFE per action. A reference that scores 0 gives no ratio."""
    ref = target_reference(recs)
    if ref is None:
        return []
    out = []
    for rec in recs:
        if (rec is ref or rec.get("status") != "done" or rec["nfe_per_action"] >= ref["nfe_per_action"]
                or rec["row"].get("checkpoint") != ref["row"].get("checkpoint")):
            continue
        nfe = rec["nfe_per_action"] / ref["nfe_per_action"]
        got = score_ratio(rec, ref)
        if got is None:
            out.append([rec["row"]["name"], f"{nfe:.2f}", "", "reference never succeeds: no ratio"])
            continue
        r, lo, hi, how = got
        if nfe > TARGET_NFE_RATIO + 1e-9:
            verdict = "NFE too high"
        elif lo >= TARGET_SUCCESS_RATIO:
            verdict = "met"
        elif hi < TARGET_SUCCESS_RATIO:
            verdict = "missed"
        else:
            verdict = "not resolved (interval holds 0.95)"
        out.append([rec["row"]["name"], f"{nfe:.2f}", f"{r:.2f} [{lo:.2f}, {hi:.2f}] ({how})", verdict])
    return out


def plot(groups: dict[str, list[dict[str, Any]]], png: Path) -> Path | None:
    """The task score (coverage or success, with 95% error bars) against NFE per action and against ms per control
    step, a row of panels per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = {g: [r for r in recs if r.get("status") == "done"] for g, recs in groups.items()}
    done = {g: recs for g, recs in done.items() if recs}
    if not done:
        return None
    fig, axes = plt.subplots(len(done), 2, figsize=(10, 3.4 * len(done)), squeeze=False)
    data: dict[str, Any] = {}
    for i, (group, recs) in enumerate(done.items()):
        data[group] = []
        for rec in recs:
            p, lo, hi = _score_point(rec)
            point = {"row": rec["row"]["name"], "score": p, "ci95": [lo, hi], "nfe_per_action": rec["nfe_per_action"],
                     "ms_per_step": _ms_per_step(rec)}
            data[group].append(point)
            for j, x in enumerate((point["nfe_per_action"], point["ms_per_step"])):
                if x is None:
                    continue
                axes[i, j].errorbar([x], [p], yerr=[[p - lo], [hi - p]], fmt="o", capsize=3)
                axes[i, j].annotate(point["row"], (x, p), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for j, label in enumerate(("NFE per executed action", "wall ms per control step (batch 1)")):
            axes[i, j].set_xscale("log")
            axes[i, j].set_xlabel(label)
            axes[i, j].set_ylabel("coverage" if any(_by_coverage(r) for r in recs) else "success")
            axes[i, j].set_ylim(-0.05, 1.05)
            axes[i, j].set_title(group, fontsize=9)
            axes[i, j].grid(alpha=0.3)
    fig.tight_layout()
    metrics.save_figure(fig, png, {"groups": data})
    plt.close(fig)
    return png


def build_report(results: str | Path) -> Path:
    """Write `<results>/report.md` and `success_vs_compute.png` from the saved JSON; returns the report's path."""
    results = Path(results)
    recs, runs = load_results(results)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in recs:
        groups[group_of(rec)].append(rec)
    png = plot(groups, results / "success_vs_compute.png")
    lines = [f"# Benchmark report: {results.name}", ""]
    if runs:
        machine = runs[-1].get("machine", {})
        lines += [(f"Machine: {machine.get('cpus')} CPUs, {machine.get('platform')}. Runs (each row's speed figures "
                  "come from the run that made it; speed ratios are given only within one run):"), ""]
        for run in runs:
            load = run.get("loadavg_start", [None])[0]
            lines.append(f"- `{run['run_id']}`: started {run.get('created')}, {run.get('workers')} workers, "
                         f"1-min load {load:.2f} at start" + (f", {run['loadavg_end'][0]:.2f} at end"
                                                               if run.get("loadavg_end") else "") +
                         f"; rows {', '.join(run.get('rows', [])) or '(none)'}")
        lines.append("")
    lines += [("Success is the fraction of seeded episodes that succeed, with its Wilson 95% interval; coverage "
              "(PushT) is the mean over episodes of each one's maximum coverage of the target, with a t interval. "
              "The seed range says whether those seeds were used for tuning or are held out for reporting. Plan "
              "latency and ms per control step come from a batch-1 timing run after the episodes (one torch "
              "thread). Rows are compared on their task score: coverage where they have it (success is rare on "
              "PushT), with a paired bootstrap interval when both rows ran the same seeds, else success with "
              "Katz's interval; each ratio says which."), ""]
    for group, group_recs in groups.items():
        lines += [f"## {group}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(group_recs)]
        lines.append("")
        if verdicts := target_verdicts(group_recs):
            ref = target_reference(group_recs)
            lines += [(f"Target: score >= {TARGET_SUCCESS_RATIO:.0%} of `{ref['row']['name']}`'s at <= 1/3 of its "
                       f"{ref['nfe_per_action']:.2f} NFE per action, read from the score ratio's 95% interval "
                       "(rows on its checkpoint spending less NFE per action)."), "",
                      "| " + " | ".join(TARGET_COLUMNS) + " |", "|" + "---|" * len(TARGET_COLUMNS)]
            lines += ["| " + " | ".join(cells) + " |" for cells in verdicts]
            lines.append("")
    if png is not None:
        lines += [f"![success against compute]({png.name})", ""]
    path = results / "report.md"
    _write(path, "\n".join(lines))
    _write(results / "report.html", html_page(f"Benchmark report: {results.name}", "\n".join(lines)))
    return path


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a crash mid-write leaves the previous file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def html_page(title: str, markdown: str) -> str:
    """The report as one HTML page (tables and the plot), rendered by markdown-it-py (a dependency rich has
    too, so the page costs no extra install)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
             "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")
