"""The Metal kernels (csrc/metal/*.metal), verified without a Mac:
1. type-checked by clang with device / constant / threadgroup as distinct address spaces;
2. executed by the CPU emulator (tests/metal_emu: a fiber per Metal thread, counted
   barriers, 32-lane collectives, Apple's simdgroup_matrix lane layout, NaN-poisoned
   threadgroup memory, ASan/UBSan, every launch under four schedules compared bit-wise),
   launched through the Metal host's dispatch plans, and compared with the CPU backend on
   shapes covering every kernel variant;
3. shown to catch seeded faults, among them the deletion of each threadgroup barrier.
What this cannot tell - Apple's compiler diagnostics and real GPU speed - the README says."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import fusedconv
from metal_emu.harness import (METAL_DIALECTS, METAL_DIR, RunnerError, compile_runner, run_conv3x3,
                               run_pixel_stats, run_stats, typecheck)
from reference import UNIT_ROUNDOFF, normalized_error

DTYPES = [mx.float32, mx.float16, mx.bfloat16]
# Both sides accumulate in f32 (in different orders) and round the activation and the
# output to the storage dtype: a rounding boundary can differ by one unit, so 2u of
# the output scale; f32: accumulation order only.
TOL = {mx.float32: 1e-5, mx.float16: 2 * UNIT_ROUNDOFF[mx.float16], mx.bfloat16: 2 * UNIT_ROUNDOFF[mx.bfloat16]}
SOURCES = sorted(METAL_DIR.glob("*.metal"))


@pytest.fixture(scope="session")
def runner(tmp_path_factory):
    return compile_runner(tmp_path_factory.mktemp("emu") / "runner")


@pytest.mark.parametrize("std", METAL_DIALECTS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_typecheck(source, std):
    res = typecheck(source, std)
    assert res.returncode == 0, res.stderr


def rand(rng, shape, dtype, scale=1.0, loc=0.0):
    return mx.array((rng.standard_normal(shape) * scale + loc).astype(np.float32)).astype(dtype)


def conv_case(seed, dtype, n, h, w, c, o, groups, upsample, *, norm=True, silu=True, bias=True, tail="residual",
              shortcut_c=24, pixel_norm=False):
    rng = np.random.default_rng(seed)
    x = rand(rng, (n, h, w, c), dtype)
    kw = dict(silu=silu, upsample=upsample)
    kw["bias"] = rand(rng, (o,), dtype, 0.1) if bias else None
    if pixel_norm:
        kw["stats"], kw["pixel_norm"] = fusedconv.pixel_norm_stats(x), True
        kw["gamma"], kw["beta"] = rand(rng, (c,), dtype, 0.3, 1.0), rand(rng, (c,), dtype, 0.3)
    elif norm:
        kw["stats"] = fusedconv.group_norm_stats(x, groups, 1e-6)
        kw["gamma"], kw["beta"] = rand(rng, (c,), dtype, 0.3, 1.0), rand(rng, (c,), dtype, 0.3)
    ho, wo = h * upsample, w * upsample
    if tail == "residual":
        kw["residual"] = rand(rng, (n, ho, wo, o), dtype)
    elif tail == "shortcut":
        kw["shortcut"] = (rand(rng, (n, ho, wo, shortcut_c), dtype), rand(rng, (o, 1, 1, shortcut_c), dtype, 0.2),
                          rand(rng, (o,), dtype, 0.1))
    return x, rand(rng, (o, 3, 3, c), dtype, 1 / np.sqrt(9 * c)), kw


def cpu_conv(x, weight, kw):
    norm = (kw["stats"], kw["gamma"], kw["beta"]) if "stats" in kw else None
    key = "pixel_norm" if kw.get("pixel_norm") else "norm"
    return fusedconv.conv3x3(x, weight, kw.get("bias"), **{key: norm}, silu=kw["silu"], upsample=kw["upsample"],
                             residual=kw.get("residual"), shortcut=kw.get("shortcut"))


# (n, h, w, c, o, groups, upsample, tail): edge tiles in x (w not a multiple of the 32-pixel
# tile), C not a multiple of the 16-channel chunk, O below / above / not a multiple of the
# 8- and 32-channel tiles (O <= 8 picks the narrow tile), 1x1 images, batch 2.
CONV_SHAPES = [
    (1, 3, 37, 20, 40, 4, 1, "residual"),
    (2, 2, 9, 16, 3, 8, 1, "none"),
    (1, 2, 5, 12, 8, 3, 2, "residual"),
    (1, 1, 1, 8, 33, 2, 2, "none"),
    (1, 3, 17, 33, 17, 3, 1, "shortcut"),
    (2, 2, 20, 32, 64, 32, 2, "residual"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv3x3_matches_cpu_backend(runner, tmp_path, dtype, shape):
    n, h, w, c, o, groups, up, tail = shape
    x, weight, kw = conv_case(hash(shape) % 1000, dtype, n, h, w, c, o, groups, up, tail=tail)
    got = run_conv3x3(runner, tmp_path / "job", x, weight, **kw)
    want = cpu_conv(x, weight, kw)
    assert normalized_error(got, want) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 37, 20, 40, 0, 2, "residual"), (2, 2, 9, 16, 3, 0, 1, "shortcut")],
                         ids=lambda s: "x".join(map(str, s)))
def test_pixel_norm_conv3x3_matches_cpu_backend(runner, tmp_path, dtype, shape):
    """The per-pixel (Qwen-Image RMS) norm on load, both tiles."""
    n, h, w, c, o, _, up, tail = shape
    x, weight, kw = conv_case(7, dtype, n, h, w, c, o, 1, up, tail=tail, pixel_norm=True)
    got = run_conv3x3(runner, tmp_path / "job", x, weight, **kw)
    assert normalized_error(got, cpu_conv(x, weight, kw)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pixel_norm_stats_matches_cpu_backend(runner, tmp_path, dtype):
    x = rand(np.random.default_rng(8), (2, 17, 19, 24), dtype, 3.0, 1.0)  # 646 pixels: a partial threadgroup
    got = run_pixel_stats(runner, tmp_path / "job", x, 1e-12)
    np.testing.assert_allclose(np.array(got), np.array(fusedconv.pixel_norm_stats(x)), rtol=2e-6)


@pytest.mark.parametrize("options", [dict(norm=False, silu=False, bias=False), dict(norm=False, silu=True),
                                     dict(norm=True, silu=False)], ids=["plain", "silu-only", "norm-only"])
def test_conv3x3_option_subsets(runner, tmp_path, options):
    x, weight, kw = conv_case(5, mx.float32, 1, 4, 11, 24, 12, 4, 1, tail="none", **options)
    assert normalized_error(run_conv3x3(runner, tmp_path / "job", x, weight, **kw), cpu_conv(x, weight, kw)) <= 1e-5


# (1, 70, 70, 8): 4900 pixels, two slices of the partial kernel merged.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, groups, mean", [((1, 7, 9, 32), 8, 0.0), ((2, 3, 50, 12), 3, 100.0),
                                                 ((1, 1, 1, 4), 4, 0.0), ((1, 70, 70, 8), 2, 10.0)], ids=str)
def test_group_norm_stats_matches_cpu_backend(runner, tmp_path, dtype, shape, groups, mean):
    rng = np.random.default_rng(3)
    x = rand(rng, shape, dtype, 2.0, mean)
    got = run_stats(runner, tmp_path / "job", x, groups, 1e-6)
    want = fusedconv.group_norm_stats(x, groups, 1e-6)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=2e-5, atol=1e-5)


# ---- seeded faults: the harness must catch each -------------------------------------

def mutated_runner(tmp_path, source_name, old, new, count=1):
    text = (METAL_DIR / source_name).read_text()
    assert text.count(old) >= count, f"mutation anchor not found: {old!r}"
    path = tmp_path / source_name
    path.write_text(text.replace(old, new, count))
    key = "conv_source" if source_name.startswith("conv") else "stats_source"
    return compile_runner(tmp_path / "runner", **{key: path})


CONV_FAULTS = {
    "halo-off-by-one": ("xx = x0 + i / BK % HALO_W - 1", "xx = x0 + i / BK % HALO_W"),
    "wrong-lane-mapping": ("return (qid & 4) + (int(lane) / 2) % 4;", "return (qid & 4) + int(lane) % 4;"),
    "missing-bounds-check": ("if (xx >= p.wo) continue;", ""),
}
BARRIER = "threadgroup_barrier(mem_flags::mem_threadgroup);"


def barrier_deletions():
    for source in SOURCES:
        for k in range(source.read_text().count(BARRIER)):
            yield source.name, k


def without_barrier(tmp_path, source_name, k):
    text = (METAL_DIR / source_name).read_text()
    at = -1
    for _ in range(k + 1):
        at = text.index(BARRIER, at + 1)
    path = tmp_path / source_name
    path.write_text(text[:at] + text[at + len(BARRIER):])
    key = "conv_source" if source_name.startswith("conv") else "stats_source"
    return compile_runner(tmp_path / "runner", **{key: path})


def test_every_barrier_is_found():
    assert sum(1 for _ in barrier_deletions()) == 6  # conv: 2 per channel-chunk loop; stats: 2


@pytest.mark.parametrize("source_name, k", list(barrier_deletions()), ids=lambda v: str(v))
def test_deleting_any_barrier_is_caught(tmp_path, source_name, k):
    """Each barrier is necessary: without it some schedule reads threadgroup memory before
    it is written or after it is overwritten, so the schedules disagree (RACE) or all of
    them are wrong. The conv case has 3 channel chunks and 2 shortcut chunks."""
    bad = without_barrier(tmp_path, source_name, k)
    try:
        if source_name.startswith("conv"):
            x, weight, kw = conv_case(4, mx.float32, 1, 3, 37, 40, 40, 4, 1, tail="shortcut", shortcut_c=24)
            got, want, tol = run_conv3x3(bad, tmp_path / "job", x, weight, **kw), cpu_conv(x, weight, kw), 1e-5
        else:
            x = rand(np.random.default_rng(2), (1, 70, 70, 8), mx.float32, 2.0, 1.0)
            got, want, tol = run_stats(bad, tmp_path / "job", x, 2, 1e-6), fusedconv.group_norm_stats(x, 2, 1e-6), 1e-5
    except RunnerError as e:
        assert e.returncode in (3, 4), e
        return
    err = normalized_error(got, want)
    assert not (err <= tol), f"barrier {k} of {source_name} deleted went unnoticed (error {err})"


@pytest.mark.parametrize("fault", list(CONV_FAULTS))
def test_seeded_conv_fault_is_caught(tmp_path, fault):
    old, new = CONV_FAULTS[fault]
    bad = mutated_runner(tmp_path, "conv3x3.metal", old, new)
    x, weight, kw = conv_case(1, mx.float32, 1, 3, 37, 20, 40, 4, 1, tail="residual")
    try:
        got = run_conv3x3(bad, tmp_path / "job", x, weight, **kw)
    except RunnerError as e:  # ASan / UBSan / emulator rejected it
        assert e.returncode != 0
        return
    err = normalized_error(got, cpu_conv(x, weight, kw))
    assert not (err <= TOL[mx.float32]), f"fault {fault} went unnoticed (error {err})"


def test_seeded_divergent_barrier_is_caught(tmp_path):
    bad = mutated_runner(tmp_path, "group_norm_stats.metal",
                         "  if (lane == 0) partial[simd_id] = v;\n  threadgroup_barrier",
                         "  if (lane == 0) partial[simd_id] = v;\n  if (tid < 64) threadgroup_barrier")
    x = mx.random.normal((1, 4, 4, 8))
    with pytest.raises(RunnerError, match="divergent"):
        run_stats(bad, tmp_path / "job", x, 2, 1e-6)


def test_typecheck_catches_address_space_mixup(tmp_path):
    bad = tmp_path / "conv3x3.metal"
    bad.write_text((METAL_DIR / "conv3x3.metal").read_text().replace("threadgroup T* halo = tgm;",
                                                                     "device T* halo = tgm;"))
    res = typecheck(bad)
    assert res.returncode != 0 and "address_space" in res.stderr


def test_plan_threadgroup_bytes_must_match_kernel(tmp_path):
    bad = mutated_runner(tmp_path, "conv3x3.metal", "3 * HALO_W * BK + 9 * BK * TN", "3 * HALO_W * BK + 8 * BK * TN")
    x, weight, kw = conv_case(1, mx.float32, 1, 2, 5, 8, 16, 4, 1, tail="none")
    with pytest.raises(RunnerError, match="threadgroup memory"):
        run_conv3x3(bad, tmp_path / "job", x, weight, **kw)


def test_emulator_is_deterministic(runner, tmp_path):
    x, weight, kw = conv_case(9, mx.bfloat16, 1, 2, 40, 24, 40, 8, 2, tail="residual")
    a = run_conv3x3(runner, tmp_path / "a", x, weight, **kw)
    b = run_conv3x3(runner, tmp_path / "b", x, weight, **kw)
    assert mx.array_equal(a, b).item()


def test_schedule_race_is_reported(tmp_path):
    """A race that every schedule but one gets right is still caught: the runner compares
    the schedules bit-wise."""
    bad = without_barrier(tmp_path, "group_norm_stats.metal", 1)
    x = rand(np.random.default_rng(1), (1, 5, 5, 4), mx.float32)
    with pytest.raises(RunnerError) as e:
        run_stats(bad, tmp_path / "job", x, 2, 1e-6)
    assert e.value.returncode == 4 and "RACE" in e.value.stderr


def test_sources_are_found():
    assert {p.name for p in SOURCES} == {"conv3x3.metal", "group_norm_stats.metal", "pixel_norm_stats.metal"}
    assert Path(METAL_DIR / "plan.h").exists()
