"""The import rules of ARCHITECTURE.md, read from the code itself: every module's imports, those inside functions
included, parsed with `ast` (nothing is imported or run)."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gemma3", "explain", "training", "webapp", "bench")
CORE_THIRD_PARTY = {"torch", "numpy", "tiktoken"}
# The one place io reaches into the runtime: load_model loads bf16 weights where the CPU multiplies bf16 natively
# (runtime.native's feature check) and packs q/k/v for the engine (runtime.engine.packing, plain PyTorch).
IO_USES_RUNTIME = {"gemma3.io.checkpoints": {"gemma3.runtime.native", "gemma3.runtime.engine.packing"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {"app": ROOT / "app.py"}
    for package in PACKAGES:
        found |= {module_name(p): p for p in (ROOT / package).rglob("*.py")}
    return found


def imports(name: str, source: str, known) -> set[str]:
    """The modules `source` (module `name`) imports anywhere in it, relative imports resolved; `from P import x`
    counts as importing P.x where P.x is a module of `known`, else P."""
    package = name.removesuffix(".__init__") if name.endswith(".__init__") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    names = set(found)
    # a package's own name is its __init__: imports inside it resolve against the package itself
    return {n: imports(n if p.name != "__init__.py" else n + ".__init__", p.read_text(), names) for n, p in found.items()}


def within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def layer(name: str) -> str | None:
    if within(name, "gemma3.io"):
        return "io"
    if within(name, "gemma3.runtime"):
        return "runtime"
    if name.startswith("gemma3.") and name != "gemma3.__main__":
        return "core"
    return None


GRAPH = graph()


def violations(g: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a rule of ARCHITECTURE.md, as 'importer -> imported: why'."""
    bad = []
    for importer, targets in g.items():
        kind = layer(importer)
        for t in sorted(targets):
            top = t.split(".")[0]
            if kind == "core" and (t == "gemma3" or within(t, "gemma3.io") or within(t, "gemma3.runtime")
                                   or within(t, "gemma3.__main__")):
                bad.append(f"{importer} -> {t}: the core imports only itself (the fast paths are applied from outside)")
            if kind == "core" and top not in sys.stdlib_module_names and top not in CORE_THIRD_PARTY | {"gemma3"}:
                bad.append(f"{importer} -> {t}: the core imports only torch, numpy, tiktoken and the standard library")
            if kind == "io" and within(t, "gemma3.runtime") and t not in IO_USES_RUNTIME.get(importer, ()):
                bad.append(f"{importer} -> {t}: io uses the runtime only where ARCHITECTURE.md says")
            if kind in ("io", "runtime") and t in ("gemma3", "gemma3.__main__"):
                bad.append(f"{importer} -> {t}: only the facade and the CLI sit above the layers")
            if kind == "runtime" and within(t, "gemma3.io"):
                bad.append(f"{importer} -> {t}: the runtime does not read files")
            if importer.startswith("gemma3") and top in ("explain", "training", "webapp", "app"):
                bad.append(f"{importer} -> {t}: gemma3 imports none of the packages beside it")
            if top == "webapp" and not within(importer, "webapp") and importer != "app":
                bad.append(f"{importer} -> {t}: only app.py imports webapp")
            if top == "app" and importer != "app":
                bad.append(f"{importer} -> {t}: nothing imports app.py")
            if within(importer, "explain") and top == "training" or within(importer, "training") and top == "explain":
                bad.append(f"{importer} -> {t}: explain and training never import each other")
    return bad


def cycles(g: dict[str, set[str]], prefix: str = "gemma3") -> list[list[str]]:
    """The import cycles among the modules under `prefix` (strongly connected components of two or more)."""
    nodes = [n for n in g if within(n, prefix)]
    edges = {n: [t for t in g[n] if t in g and within(t, prefix) and t != n] for n in nodes}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for n in nodes:
        if n not in index:
            visit(n)
    return out


def test_the_three_layers_are_where_the_rules_expect_them():
    kinds = {n: layer(n) for n in GRAPH}
    assert {n for n, k in kinds.items() if k == "core"} >= {"gemma3.config", "gemma3.model", "gemma3.cache",
                                                            "gemma3.tokenizer", "gemma3.generation", "gemma3.loss"}
    assert kinds["gemma3.io.checkpoints"] == "io" and kinds["gemma3.runtime.engine.forward"] == "runtime"
    assert "gemma3.runtime.native" in GRAPH["gemma3.runtime.engine.ops"]  # imports are read, relative ones too
    assert {"gemma3.runtime.cpu", "gemma3.runtime.engine.ops"} <= GRAPH["gemma3.runtime.engine"]  # a package's own, too


def test_every_import_keeps_the_rules():
    assert violations(GRAPH) == []


def test_no_import_cycle_between_gemma3_modules():
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("importer, source, why", [
    ("gemma3.model", "def f():\n    from .runtime import native\n", "the core imports only itself"),
    ("gemma3.generation", "import gemma3\n", "the core imports only itself"),
    ("gemma3.cache", "import safetensors\n", "the core imports only torch"),
    ("gemma3.io.gguf", "from ..runtime.engine import ops\n", "io uses the runtime only where"),
    ("training.trainer", "from webapp import models\n", "only app.py imports webapp"),
    ("explain.hooks", "from training import runs\n", "never import each other"),
])
def test_a_broken_rule_is_seen(importer, source, why):
    g = {**GRAPH, importer: imports(importer, source, set(GRAPH))}
    assert any(why in v for v in violations(g))


def test_a_cycle_is_seen():
    g = {**GRAPH, "gemma3.io.files": GRAPH["gemma3.io.files"] | {"gemma3.io.checkpoints"}}
    assert ["gemma3.io.checkpoints", "gemma3.io.files"] in [sorted(set(c) & {"gemma3.io.checkpoints", "gemma3.io.files"})
                                                            for c in cycles(g)]
