import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from vae_fixtures import diffusers_vae


def test_demo_runs_and_reports_memory_time_and_difference():
    out = subprocess.run(
        [sys.executable, "-m", "fusedconv.cli", "demo", "--size", "32", "--channels", "64"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "fused" in out and "mlx.nn" in out and "peak above inputs" in out
    normalized = float(out.rsplit("normalized", 1)[1].strip(" )\n"))
    assert normalized < 4 * 2.0**-8  # bf16 parity, as in test_conv3x3_parity


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fusedconv.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    diffusers_vae("sd-like-3block").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("reference", [False, True], ids=["fused", "reference"])
def test_decode_writes_png(vae_folder, tmp_path, reference):
    latents = tmp_path / "z.npy"
    np.save(latents, np.random.default_rng(0).standard_normal((1, 4, 6, 5)).astype(np.float32))  # NCHW
    out = tmp_path / "img.png"
    res = run_cli("decode", str(latents), "--weights", str(vae_folder), "-o", str(out),
                  *(["--reference"] if reference else []))
    assert res.returncode == 0, res.stderr
    assert "peak" in res.stdout and "decoded" in res.stdout
    img = Image.open(out)
    assert img.size == (20, 24) and img.mode == "RGB"  # 4x upsampling of a 6x5 latent
    assert np.array(img).std() > 0


def test_decode_batch_from_safetensors(vae_folder, tmp_path):
    latents = tmp_path / "z.safetensors"
    save_file({"latents": np.random.default_rng(1).standard_normal((2, 3, 3, 4)).astype(np.float32)}, str(latents))
    res = run_cli("decode", str(latents), "--weights", str(vae_folder), "-o", str(tmp_path / "b.png"), "--quiet",
                  "--layout", "nhwc")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "b-0.png").exists() and (tmp_path / "b-1.png").exists()


def test_decode_errors_are_clear(vae_folder, tmp_path):
    latents = tmp_path / "z.npy"
    np.save(latents, np.zeros((1, 3, 5, 6), np.float32))  # no axis of 4 channels
    res = run_cli("decode", str(tmp_path / "nope.npy"), "--weights", str(vae_folder))
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = run_cli("decode", str(latents), "--weights", str(tmp_path / "missing"))
    assert res.returncode == 2 and "--weights" in res.stderr
    res = run_cli("decode", str(latents), "--weights", str(vae_folder))
    assert res.returncode == 2 and "channels" in res.stderr
    no_decoder = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.w": np.zeros(3, np.float32)}, str(no_decoder))
    res = run_cli("decode", str(latents), "--weights", str(no_decoder), "--config", "sd1")
    assert res.returncode == 2 and "no VAE decoder" in res.stderr


def test_nchw_latents_whose_width_equals_the_channels_are_not_read_as_nhwc(vae_folder, tmp_path):
    """Was: a [1, 4, 6, 4] NCHW latent (width 4 = channels) read as NHWC, a transposed image, exit 0."""
    latents = tmp_path / "z.npy"
    np.save(latents, np.random.default_rng(2).standard_normal((1, 4, 6, 4)).astype(np.float32))
    res = run_cli("decode", str(latents), "--weights", str(vae_folder), "-o", str(tmp_path / "a.png"), "--quiet")
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "a.png").size == (16, 24)  # width 4 x 4, height 6 x 4
    res = run_cli("decode", str(latents), "--weights", str(vae_folder), "-o", str(tmp_path / "b.png"), "--quiet",
                  "--layout", "nhwc")
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "b.png").size == (24, 16)


def test_layout_mismatch_suggests_the_flag(vae_folder, tmp_path):
    latents = tmp_path / "z.npy"
    np.save(latents, np.zeros((1, 6, 5, 4), np.float32))  # NHWC
    res = run_cli("decode", str(latents), "--weights", str(vae_folder))
    assert res.returncode == 2 and "--layout nhwc" in res.stderr


def test_decode_refuses_bad_paths_and_values_before_decoding(vae_folder, tmp_path):
    latents = tmp_path / "z.npy"
    np.save(latents, np.zeros((1, 4, 3, 3), np.float32))
    res = run_cli("decode", str(tmp_path), "--weights", str(vae_folder))
    assert res.returncode == 2 and "is a folder" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("decode", str(latents), "--weights", str(vae_folder), "-o", str(tmp_path / "no" / "x.png"))
    assert res.returncode == 2 and "--output: cannot write" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("decode", str(latents), "--weights", str(vae_folder), "-o", str(tmp_path))
    assert res.returncode == 2 and "--output" in res.stderr
    bad = np.zeros((1, 4, 3, 3), np.float32)
    bad[0, 0, 0, 0] = np.nan
    np.save(latents, bad)
    res = run_cli("decode", str(latents), "--weights", str(vae_folder), "-o", str(tmp_path / "n.png"))
    assert res.returncode == 2 and "NaN" in res.stderr and not (tmp_path / "n.png").exists()


def test_doctor_reports_versions_checks_and_timing(tmp_path, capsys):
    import json

    from fusedconv import cli

    out = tmp_path / "doctor.json"
    assert cli.main(["doctor", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mlx"] == mx.__version__ and report["cpu_build"] in report["cpu_builds_available"]
    assert report["built_with_cuda"] is False and report["cuda_kernels"] is None  # MLX's CPU build
    names = [c["check"] for c in report["checks"]]
    assert len(names) >= 9 and all(c["ok"] for c in report["checks"])
    assert report["timing"]["fused_gn_silu_conv3x3_s"] > 0
    text = capsys.readouterr().out
    assert "CPU kernel build" in text and "[ok] cpu conv3x3 bfloat16" in text
