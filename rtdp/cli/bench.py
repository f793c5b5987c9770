"""`rtdp bench SUITE.yaml [--resume] [--only ROW ...] [--no-progress]`: run a benchmark suite's rows (each in its
own process, one torch thread, as many at once as the suite's `workers`), then write the report;
`rtdp bench report RESULTS_DIR` rebuilds the report from the saved JSON alone. docs/bench.md."""

from __future__ import annotations

import argparse

from rtdp.cli.main import CLIError

USAGE = ("rtdp bench SUITE.yaml [--resume] [--only ROW ...] [--workers N] [--no-progress] [--executor local|ray] "
         "[--ray-address ADDR] | rtdp bench report RESULTS_DIR")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every rtdp command
        raise CLIError(f"{message}; usage: {USAGE}")


def main(argv: list[str]) -> int:
    from rtdp.bench.report import build_report
    from rtdp.bench.suite import SuiteError

    if argv[:1] == ["report"]:
        if len(argv) != 2:
            raise CLIError(f"give one results folder; usage: {USAGE}")
        try:
            print(build_report(argv[1]))
        except FileNotFoundError as err:
            raise CLIError(str(err)) from None
        return 0
    ap = _Parser(prog="rtdp bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", help="the suite file (YAML; docs/bench.md)")
    ap.add_argument("--resume", action="store_true", help="keep finished rows and run the rest")
    ap.add_argument("--only", nargs="+", metavar="ROW", help="run only these rows")
    ap.add_argument("--workers", type=int, metavar="N",
                    help="rows at once, overriding the suite's (e.g. 1 while another job holds a core)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--executor", choices=("local", "ray"), help="override the suite's executor")
    ap.add_argument("--ray-address", help="executor ray: the cluster's address (default: start a local Ray)")
    args = ap.parse_args(argv)
    from rtdp.bench.runner import run_suite
    from rtdp.bench.suite import load_suite

    try:
        suite = load_suite(args.suite)
        if args.workers is not None:
            if args.workers < 1:
                raise CLIError(f"--workers must be >= 1, got {args.workers}")
            suite.workers = args.workers
        if args.executor:
            suite.executor = args.executor
        if args.ray_address:
            suite.ray_address = args.ray_address
        status = run_suite(suite, only=args.only, resume=args.resume, progress=not args.no_progress)
    except SuiteError as err:
        raise CLIError(str(err)) from None
    report = build_report(suite.results)
    for name, state in status.items():
        print(f"{name}: {state}")
    print(f"report: {report}")
    return 0 if all(s.startswith("done") for s in status.values()) else 1
