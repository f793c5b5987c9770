"""benchmarks/rtc.py's tuned methods (`--variant NAME=METHOD:key=value,...`): a variant runs its base method's
overrides plus its own, under the same execution scheme, and a malformed one is refused before anything runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rtdp.cli.train import compose_config
from rtdp.policy.loading import apply_overrides

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "rtc.py"


@pytest.fixture
def rtc_bench():
    spec = importlib.util.spec_from_file_location("rtc_bench_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a fresh module: variants registered here do not leak into other tests
    return module


def test_a_variant_extends_its_base_methods_overrides_and_keeps_its_execution(rtc_bench):
    name = rtc_bench.add_variant("guided_b100_lin=rtc_guided:sampler.beta=100,sampler.prefix_weights=linear")
    overrides, execution = rtc_bench.METHODS[name]
    base, base_execution = rtc_bench.METHODS["rtc_guided"]
    assert overrides[: len(base)] == base and execution == base_execution == "naive"
    cfg = apply_overrides(compose_config(["policy=sdp_unet"]), overrides)
    assert cfg.sampler.name == "rtc" and cfg.sampler.beta == 100 and cfg.sampler.prefix_weights == "linear"


@pytest.mark.parametrize("spec", ["no_equals", "x=not_a_method:sampler.beta=1", "x=rtc_guided", "naive=rtc_guided:a=1"])
def test_a_malformed_or_clashing_variant_is_refused(rtc_bench, spec):
    with pytest.raises(ValueError, match="--variant"):
        rtc_bench.add_variant(spec)


def test_the_cli_refuses_a_bad_variant_with_exit_2_before_loading_anything(rtc_bench, tmp_path, capsys):
    out = tmp_path / "rtc.json"
    assert rtc_bench.main(["--variant", "x=nope:a=1", "--out", str(out)]) == 2
    assert "--variant" in capsys.readouterr().err and not out.exists()
