"""`rtdp bench`: benchmark suites as data (suite), run in a pool of worker processes (runner, worker), reported
with honest statistics from their saved JSON alone (report). docs/bench.md."""
