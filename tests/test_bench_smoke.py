"""The benchmarks run end to end at tiny sizes (no timing assertions: this only keeps the bench code working)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(module, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_op_bench(tmp_path):
    run_bench("bench.op_bench", "--decode-size", "16", "--repeats", "1", "--out", str(tmp_path))
    data = json.loads((tmp_path / "ops_16_bfloat16.json").read_text())
    assert data["machine"]["mlx"] and len(data["results"]) >= 9
    for row in data["results"]:
        assert row["fused"]["peak_above_inputs_bytes"] > 0 and "median_s" in row["reference"]
    assert (tmp_path / "ops_16_bfloat16.png").stat().st_size > 0
    assert "| up3 resnet conv" in run_bench("bench.report", str(tmp_path / "ops_16_bfloat16.json"))


def test_decoder_bench(tmp_path):
    out = run_bench("bench.decoder_bench", "--sizes", "16", "32", "16x24", "--repeats", "1", "--reference-max-size",
                    "16", "--torch-dtype", "float32", "bfloat16", "--out", str(tmp_path))
    assert "fused/diffusers float32" in out and "fused/diffusers bfloat16" in out
    data = json.loads((tmp_path / "decoder_flux_bfloat16.json").read_text())
    by = {(r["method"], r["size"]): r for r in data["results"]}
    assert by[("fused", 32)]["peak_over_floor"] > 0 and by[("diffusers", 32)]["max_rss_bytes"] > 0
    assert "skipped" in by[("reference", 32)] and "median_s" in by[("reference", 16)]
    # A non-square size: its own floor and FLOP count, between the squares' (16 x 24 pixels).
    wide = by[("fused", "16x24")]
    assert (wide["height"], wide["width"]) == (16, 24) and "skipped" in by[("reference", "16x24")]
    for key in ("floor_bytes", "gflop"):
        assert by[("fused", 16)][key] < wide[key] < by[("fused", 32)][key], key
    assert (tmp_path / "decoder_flux_bfloat16.png").stat().st_size > 0
    table = run_bench("bench.report", str(tmp_path / "decoder_flux_bfloat16.json"))
    assert "| 32 | fused |" in table and "| 32 | diffusers bfloat16 |" in table and "fused takes" in table
    assert data["machine"]["fusedconv_cpu_isa_calibration_s"]


@pytest.mark.parametrize("module, size", [("bench.decoder_bench", "20"), ("bench.decoder_bench", "16x12"),
                                          ("bench.mflux_bench", "16x0"), ("bench.mflux_bench", "16y16")])
def test_benches_reject_sizes_they_cannot_decode(tmp_path, module, size):
    """Sides not multiples of the VAE's upsample factor (8), or not sizes at all: an error that
    names --sizes before anything runs."""
    res = subprocess.run([sys.executable, "-m", module, "--sizes", size, "--out", str(tmp_path)], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert res.returncode == 2 and "--sizes" in res.stderr, res.stderr[-500:]
    assert not list(tmp_path.iterdir())


def test_mflux_bench(tmp_path):
    pytest.importorskip("mflux", reason="mflux 0.24 is installed by .ci/run")
    out = run_bench("bench.mflux_bench", "--vaes", "flux2-small", "--sizes", "32", "--out", str(tmp_path))
    assert "low_memory" in out and "legacy" in out
    data = json.loads((tmp_path / "mflux_flux2-small.json").read_text())
    assert {r["method"] for r in data["results"] if "median_s" in r} == {"fused", "low_memory", "legacy"}
    assert (tmp_path / "mflux_flux2-small.png").stat().st_size > 0
    assert "fused takes" in run_bench("bench.report", str(tmp_path / "mflux_flux2-small.json"))
