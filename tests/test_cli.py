import subprocess
import sys


def test_demo_runs_and_reports_memory_time_and_difference():
    out = subprocess.run(
        [sys.executable, "-m", "fusedconv.cli", "demo", "--size", "32", "--channels", "64"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "fused" in out and "mlx.nn" in out and "peak above inputs" in out
    normalized = float(out.rsplit("normalized", 1)[1].strip(" )\n"))
    assert normalized < 4 * 2.0**-8  # bf16 parity, as in test_conv3x3_parity
