"""The package's shape: no import cycles, every module importable on its own, imports that point
down (the models and backbones import neither the CPU layer, training nor the command line), and
neither torch nor transformers anywhere in the package (the benchmarks and tests use them)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dpt_mlx"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """The dpt_mlx modules ``module`` imports, at its top level or inside functions."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # "pkg.mod.attr" -> "pkg.mod"
                name = name.rpartition(".")[0]
            if name.startswith("dpt_mlx") and name != module:
                found.add(name)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            # A package's __init__ that re-exports its submodules is imported first, never a cycle.
            if MODULES[n].name == "__init__.py" and m.startswith(n + "."):
                continue
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if state.get(n) is None:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_graph_check_finds_cycles():
    saved = dict(GRAPH)
    try:
        GRAPH["dpt_mlx.ops"] = GRAPH["dpt_mlx.ops"] | {"dpt_mlx.configs.dpt"}
        GRAPH["dpt_mlx.configs.dpt"] = GRAPH["dpt_mlx.configs.dpt"] | {"dpt_mlx.ops"}
        assert _cycle() is not None
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_no_import_cycles():
    assert _cycle() is None, " -> ".join(_cycle())


@pytest.mark.parametrize("layer", ["dpt_mlx.models", "dpt_mlx.backbones", "dpt_mlx.layers", "dpt_mlx.ops"])
def test_models_and_backbones_import_only_what_lies_below(layer):
    plain = [m for m in MODULES if m == layer or m.startswith(layer + ".")]
    assert plain
    above = ("dpt_mlx.cpu", "dpt_mlx.training", "dpt_mlx.cli", "dpt_mlx.pipelines", "dpt_mlx.predictor", "dpt_mlx.ray")
    for m in plain:
        wrong = sorted(n for n in GRAPH[m] if n.startswith(above))
        assert not wrong, f"{m} imports {wrong}"


def test_the_package_imports_neither_torch_nor_transformers():
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            found += [(module, n) for n in names if n.split(".")[0] in ("torch", "transformers")]
    assert not found, found


def _import_alone(module: str) -> tuple[str, int, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", f"import {module}"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    return module, out.returncode, out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""


@pytest.mark.slow
def test_every_module_imports_on_its_own():
    with ThreadPoolExecutor(max_workers=2) as pool:
        failed = [r for r in pool.map(_import_alone, sorted(MODULES)) if r[1] != 0]
    assert not failed, failed


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_passes(command):
    """The lint and format rules of pyproject.toml hold for the whole tree."""
    out = subprocess.run(
        [sys.executable, "-m", "ruff", *command, str(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]


def test_console_scripts_run_their_command_under_their_name(monkeypatch, capsys):
    """Each console script of pyproject.toml loads its command's main, which names itself after
    the script in its usage line."""
    from importlib.metadata import distribution

    scripts = {ep.name: ep for ep in distribution("dpt_mlx").entry_points if ep.group == "console_scripts"}
    assert set(scripts) == {"dpt-mlx", "dpt-mlx-convert", "dpt-mlx-train", "dpt-mlx-batch"}
    for name, entry in scripts.items():
        monkeypatch.setattr(sys, "argv", [f"/usr/local/bin/{name}"])
        try:
            code = entry.load()(["--help"])
        except SystemExit as exc:
            code = exc.code
        assert code == 0, name
        assert capsys.readouterr().out.startswith(f"usage: {name} "), name
