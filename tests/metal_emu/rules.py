"""Metal Shading Language rules that a C++ compiler does not enforce, checked the way
Apple's compiler reads a .metal translation unit (clang's JSON AST of the type-check
build, plus clang's own unknown-attribute warnings):

- every program-scope variable is in the constant address space ("program scope
  variable must reside in constant address space"); a function-scope static only in
  threadgroup or constant;
- no double, exceptions, new/delete, goto, virtual functions, RTTI or function pointers;
- only attributes Metal knows;
- every [[kernel]] parameter carries an attribute, buffer indices unique per kernel.

Each rule has a seeded-violation test (tests/test_metal_rules.py)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from metal_emu.harness import typecheck_command

CONSTANT, THREADGROUP = "address_space(2)", "address_space(3)"
FORBIDDEN_NODES = {
    "CXXThrowExpr": "exceptions", "CXXTryStmt": "exceptions", "CXXNewExpr": "new", "CXXDeleteExpr": "delete",
    "GotoStmt": "goto", "CXXDynamicCastExpr": "RTTI", "CXXTypeidExpr": "RTTI",
}
# Attributes of the Metal Shading Language (specification 3.2, sections 5.2 and 4.x)
# that the project may use; anything else clang reports as unknown is an error.
METAL_ATTRIBUTES = {
    "kernel", "host_name", "buffer", "threadgroup", "texture", "sampler", "function_constant",
    "thread_position_in_grid", "thread_position_in_threadgroup", "thread_index_in_threadgroup",
    "threadgroup_position_in_grid", "threads_per_threadgroup", "threadgroups_per_grid", "threads_per_grid",
    "thread_index_in_simdgroup", "simdgroup_index_in_threadgroup", "simdgroups_per_threadgroup",
    "threads_per_simdgroup", "dispatch_threads_per_threadgroup", "max_total_threads_per_threadgroup",
}


def _csrc(source: Path) -> Path:
    return source.resolve().parents[1]  # csrc/metal/x.metal -> csrc (also for a copy of csrc)


def _ast(source: Path, std: str) -> dict:
    res = subprocess.run(typecheck_command(source, std, "-Xclang", "-ast-dump=json", csrc=_csrc(source)),
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"type-check of {source.name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


def _walk(node: dict, parents: tuple, state: dict):
    loc = node.get("loc") or {}
    state["file"] = loc.get("file") or (loc.get("expansionLoc") or {}).get("file") or state["file"]
    yield node, parents, state["file"]
    for child in node.get("inner") or ():
        yield from _walk(child, parents + (node.get("kind"),), state)


def _ast_violations(source: Path, std: str) -> list[str]:
    problems = []
    for node, parents, file in _walk(_ast(source, std), (), {"file": str(source)}):
        kind, name = node.get("kind"), node.get("name", "")
        qual = (node.get("type") or {}).get("qualType", "")
        where = f"{Path(file).name}: {kind} {name}".rstrip()
        if kind == "VarDecl":
            at_program_scope = parents and parents[-1] in ("TranslationUnitDecl", "NamespaceDecl")
            if at_program_scope and CONSTANT not in qual:
                problems.append(f"{where}: program-scope variable outside the constant address space ({qual})")
            elif not at_program_scope and node.get("storageClass") == "static" and not (
                    CONSTANT in qual or THREADGROUP in qual):
                problems.append(f"{where}: function-scope static outside threadgroup/constant ({qual})")
        if kind in FORBIDDEN_NODES:
            problems.append(f"{where}: {FORBIDDEN_NODES[kind]} are not Metal")
        if kind == "CXXMethodDecl" and node.get("virtual"):
            problems.append(f"{where}: virtual functions are not Metal")
        if kind in ("VarDecl", "ParmVarDecl", "FieldDecl", "FunctionDecl") and re.search(r"\bdouble\b", qual):
            problems.append(f"{where}: double is not Metal ({qual})")
        if kind in ("VarDecl", "ParmVarDecl", "FieldDecl") and "(*)" in qual:
            problems.append(f"{where}: function pointers are not Metal ({qual})")
    return problems


def _attribute_violations(source: Path, std: str) -> list[str]:
    cmd = [a for a in typecheck_command(source, std, csrc=_csrc(source)) if a != "-Wno-unknown-attributes"]
    cmd.insert(cmd.index("-Werror") + 1, "-Wno-error=unknown-attributes")
    res = subprocess.run(cmd, capture_output=True, text=True)
    names = set(re.findall(r"unknown attribute '(\w+)' ignored", res.stderr))
    return [f"{source.name}: unknown attribute [[{n}]]" for n in sorted(names - METAL_ATTRIBUTES)]


def _kernel_signature_violations(source: Path) -> list[str]:
    problems = []
    text = source.read_text()
    for m in re.finditer(r"\[\[kernel\]\]\s*void\s+(\w+)\s*\((.*?)\)\s*\{", text, re.S):
        kernel, params = m.group(1), [p.strip() for p in m.group(2).split(",\n")]
        buffers = [int(b) for p in params for b in re.findall(r"\[\[buffer\((\d+)\)\]\]", p)]
        if len(buffers) != len(set(buffers)):
            problems.append(f"{source.name}: {kernel}: a buffer index is bound twice ({sorted(buffers)})")
        problems += [f"{source.name}: {kernel}: parameter without a Metal attribute: {p}"
                     for p in params if not re.search(r"\[\[\w+(\(\d+\))?\]\]$", p)]
    return problems


def violations(source: Path, std: str = "c++14") -> list[str]:
    return _ast_violations(source, std) + _attribute_violations(source, std) + _kernel_signature_violations(source)
