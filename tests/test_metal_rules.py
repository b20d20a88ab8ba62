"""The Metal rule check (tests/metal_emu/rules.py) on the project's kernels, and a seeded
violation of each rule in a copy of csrc/ - among them the namespace-scope `constexpr`
in a header that Apple's compiler rejects ("program scope variable must reside in
constant address space")."""

import shutil

import pytest

from metal_emu.harness import METAL_DIALECTS, METAL_DIR
from metal_emu.rules import violations

SOURCES = sorted(METAL_DIR.glob("*.metal"))


@pytest.mark.parametrize("std", METAL_DIALECTS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_kernels_follow_metal_rules(source, std):
    assert violations(source, std) == []


# (file in csrc/, text to find, replacement, words the violation message must contain)
SEEDED = {
    "namespace-constexpr-in-header": ("metal/tiles.h", "FC_CONST int kConvBK = 16;",
                                      "FC_CONST int kConvBK = 16;\nconstexpr int kExtra = 2;",
                                      "program-scope variable"),
    "static-local-in-device-code": ("metal/conv3x3.metal", "  typedef typename D::storage T;",
                                    "  typedef typename D::storage T;\n  static int calls = 0;\n  (void)calls;",
                                    "function-scope static"),
    "double": ("metal/dtype.h", "static float load(float v) { return v; }",
               "static float load(float v) { return float(double(v) * 1.0); }\n  static double wide(double v) { return v; }",
               "double"),
    "goto": ("metal/group_norm_stats.metal", "  if (index >= uint(p.n * p.groups)) return;",
             "  if (index >= uint(p.n * p.groups)) goto out;\n  if (false) {\n  out:\n    return;\n  }", "goto"),
    "unknown-attribute": ("metal/conv3x3.metal", "uint lane [[thread_index_in_simdgroup]],",
                          "uint lane [[thread_index_in_simdgroups]],", "unknown attribute"),
    "duplicate-buffer-index": ("metal/conv3x3.metal", "[[buffer(9)]]", "[[buffer(8)]]", "bound twice"),
    "parameter-without-attribute": ("metal/group_norm_stats.metal", "uint index [[thread_position_in_grid]]",
                                    "uint index", "without a Metal attribute"),
}


@pytest.mark.parametrize("case", list(SEEDED))
def test_seeded_violation_is_caught(tmp_path, case):
    name, old, new, words = SEEDED[case]
    csrc = tmp_path / "csrc"
    shutil.copytree(METAL_DIR.parent, csrc, ignore=shutil.ignore_patterns("cpu"))
    target = csrc / name
    text = target.read_text()
    assert old in text, f"anchor not found: {old!r}"
    target.write_text(text.replace(old, new, 1))
    found = [v for source in sorted((csrc / "metal").glob("*.metal")) for v in violations(source)]
    assert any(words in v for v in found), found
