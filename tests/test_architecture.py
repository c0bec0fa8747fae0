"""Imports flow one way: apps > jobs > runtime > io > core, and no module imports itself back through others.

Checked twice: by import-linter's contracts in pyproject.toml, and by walking the AST of every module in fcnseg/
here, module-level and function-level imports alike (an import inside a function still ties the two modules).
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fcnseg"

# Top-level parts of fcnseg by layer, bottom (0) to top. The root package is the public API: it may import anything
# and nothing may import it.
LAYERS = {
    "core": ("models", "data", "metrics", "losses", "tasks", "preprocessing", "version", "_optional", "tta"),
    "io": ("io", "pretrained", "hub"),
    "runtime": ("runtime",),
    "jobs": ("train", "evaluate", "predict", "export", "video", "backends", "quantize"),
    "apps": ("cli", "serve", "demo", "report"),
}
RANK = {part: rank for rank, parts in enumerate(LAYERS.values()) for part in parts}
ROOT_RANK = len(LAYERS)


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The fcnseg modules that ``module`` imports anywhere in its code (relative imports resolved; ``from P import
    N`` counts as importing ``P.N`` when that is a module, else ``P``), its own parent packages left out."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # ``import fcnseg.models.fcn.x`` style names: the longest known module
                t = t.rpartition(".")[0]
            # A submodule reading its own package's __init__ is not counted (as check_architecture.py does not).
            if t and t != module and not module.startswith(t + "."):
                out.add(t)
    return out


def rank(module: str) -> int:
    parts = module.split(".")
    if parts == ["fcnseg"]:
        return ROOT_RANK
    if parts[1] not in RANK:
        raise AssertionError(f"{module}: not in any layer; add fcnseg.{parts[1]} to LAYERS here and to the "
                             "import-linter contract in pyproject.toml")
    return RANK[parts[1]]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imported(m, p, known) for m, p in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_every_module_imports_only_its_own_layer_or_lower():
    edges = graph()
    assert "fcnseg.models.fcn" in edges and "fcnseg.io.modelfile" in edges["fcnseg.pretrained"]
    upward = [f"{m} ({rank(m)}) imports {t} ({rank(t)})" for m, ts in sorted(edges.items()) for t in sorted(ts)
              if rank(t) > rank(m)]
    assert not upward, "\n".join(upward)


def test_no_module_imports_itself_back():
    assert not circles(graph()), circles(graph())


def test_the_checks_catch_what_they_look_for(tmp_path):
    # The old loop: FCN.predict imported the predict job inside a function, predict imported the checkpoint module,
    # which imported the model module.
    fake = tmp_path / "fcn.py"
    fake.write_text("import torch\n\nfrom .spec import ModelSpec\n\n\ndef predict(self):\n"
                    "    from ..predict import predict_image\n")
    seen = imported("fcnseg.models.fcn", fake, modules())
    assert seen == {"fcnseg.models.spec", "fcnseg.predict"}
    assert rank("fcnseg.predict") > rank("fcnseg.models.fcn")
    edges = graph()
    edges["fcnseg.models.fcn"] = edges["fcnseg.models.fcn"] | seen
    edges["fcnseg.predict"] = edges["fcnseg.predict"] | {"fcnseg.io.modelfile"}
    assert any({"fcnseg.models.fcn", "fcnseg.predict", "fcnseg.io.modelfile"} <= set(c) for c in circles(edges))


def test_import_linter_contracts_are_kept(monkeypatch):
    pytest.importorskip("importlinter")
    from importlinter import cli

    # lint_imports reads pyproject.toml's [tool.importlinter] and imports fcnseg from sys.path: this checkout's.
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    assert cli.lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True) == \
        cli.EXIT_STATUS_SUCCESS
