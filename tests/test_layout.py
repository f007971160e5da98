"""The layout of the code, read statically (ast): every import counts, those inside functions too.

- no import cycle between modules, in packforcing_core and in nodes;
- packforcing_core never imports ComfyUI (nor reaches out of itself into the node pack);
- the core's packages keep their layering (LAYERS, the table in README.md "Layout");
- no core file over MAX_LINES lines, except LONG_FILES (each with its reason).

Each check is also run on a small tree made wrong on purpose, so that each is seen to fail.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = "packforcing_core"
TOPS = (CORE, "nodes")
MAX_LINES = 400
LONG_FILES: dict[str, str] = {}     # path under the repository -> why it is longer than MAX_LINES

# package of the core -> the packages it may import (besides itself). "__init__" is the core's own
# __init__.py, "__main__" its entry point.
LAYERS = {
    "io": set(),
    "text": set(),
    "model": {"io"},
    "vae": {"io"},
    "cache": {"model", "io"},
    "sampling": {"cache", "model", "vae", "io"},
    "training": {"sampling", "cache", "model", "vae", "io"},
    "report": {"io", "vae"},
    "cli": {"training", "sampling", "cache", "model", "vae", "report", "text", "io"},
    "__init__": set(),
    "__main__": {"cli"},
}
COMFY = {"comfy", "comfy_extras", "comfy_api", "comfy_api_nodes", "comfy_execution", "comfy_config", "folder_paths",
         "server", "nodes", "execution", "latent_preview", "node_helpers", "comfyui_version", "app", "cuda_malloc",
         "main", "protocol", "new_updater", "utils", "middleware", "api_server", "alembic_db"}


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of TOPS under root (the repository is the root package)."""
    out = {}
    for top in TOPS:
        for path in sorted((root / top).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(root: Path) -> dict[str, list[tuple[str, int]]]:
    """Module -> (absolute name it imports, line), for every import statement anywhere in it. A
    relative import that climbs out of TOPS resolves against the repository package ("")."""
    mods = modules(root)
    out = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(a.name, node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - node.level + 1] if node.level <= len(package) + 1 else ["..."]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module
                for a in node.names:      # `from pkg import mod` imports the module, else a name of pkg
                    sub = f"{base}.{a.name}" if base else a.name
                    found.append((sub if sub in mods else base, node.lineno))
        out[name] = found
    return out


def edges(root: Path) -> dict[str, dict[str, int]]:
    """Module -> {module of TOPS it imports: line}."""
    mods = modules(root)
    out = {}
    for name, found in imports(root).items():
        out[name] = {}
        for target, line in found:
            while target and target not in mods:     # `from a.b import c`: the module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                out[name].setdefault(target, line)
    return out


def cycles(root: Path) -> list[list[str]]:
    """Import cycles (strongly connected groups of modules), each as a list of its modules."""
    graph = edges(root)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):                     # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def comfy_imports(root: Path) -> list[str]:
    """Imports of ComfyUI (or of anything outside the core) by the core: 'module:line imports name'."""
    out = []
    for name, found in imports(root).items():
        if name != CORE and not name.startswith(CORE + "."):
            continue
        for target, line in found:
            top = target.split(".")[0]
            if top in COMFY or top in {"", "..."} or (top in TOPS and top != CORE):
                out.append(f"{name}:{line} imports {target or 'the node pack'}")
    return out


def package_of(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def layer_violations(root: Path) -> list[str]:
    """Core imports across packages that LAYERS does not allow: 'importer:line imports imported (...)'."""
    out = []
    for name, targets in edges(root).items():
        if not name.startswith(CORE + ".") and name != CORE:
            continue
        here = package_of(name)
        for target, line in targets.items():
            if not target.startswith(CORE + ".") and target != CORE:
                continue
            there = package_of(target)
            if here not in LAYERS:
                out.append(f"{name}: package '{here}' is not in LAYERS (add it, with what it may import)")
            elif there != here and there not in LAYERS[here]:
                allowed = ", ".join(sorted(LAYERS[here])) or "nothing of the core"
                out.append(f"{name}:{line} imports {target} ('{here}' may import {allowed})")
    return sorted(set(out))


def long_files(root: Path) -> list[str]:
    out = []
    for path in sorted((root / CORE).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and rel not in LONG_FILES:
            out.append(f"{rel}: {n} lines (split it along its concepts, or add it to LONG_FILES with the reason)")
    return out


# ----------------------------------------------------------------------------- the repository

def test_no_import_cycles():
    assert cycles(ROOT) == []


def test_the_core_never_imports_comfyui():
    assert comfy_imports(ROOT) == []


def test_the_core_packages_keep_their_layers():
    assert layer_violations(ROOT) == []
    packages = {p.name for p in (ROOT / CORE).iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS) - {"__init__", "__main__"}, "LAYERS names every package of the core"


def test_no_core_file_is_too_long():
    assert long_files(ROOT) == []
    assert all((ROOT / p).exists() for p in LONG_FILES), "LONG_FILES names only files that exist"


def readme_layers(text: str) -> dict[str, set[str]]:
    """The package -> imports table of README.md's "Layout" section."""
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    out = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].endswith("/`"):
            imports = cells[2]
            names = set(out) if imports == "all of the above" else \
                set() if imports == "nothing of the core" else {n.strip() for n in imports.split(",")}
            out[cells[0].strip("`/")] = names
    return out


def test_readme_layout_table_matches_the_layers():
    table = readme_layers((ROOT / "README.md").read_text())
    assert table == {k: v for k, v in LAYERS.items() if not k.startswith("__")}


def test_the_checks_see_every_import():
    """A check that finds nothing must have looked: the graph holds known edges, those made inside a
    function included (the CLI imports the VAE loader only when a VAE is given)."""
    graph = edges(ROOT)
    assert "packforcing_core.cache.config" in graph["packforcing_core.cache.packed"]
    assert "packforcing_core.training.evaluation" in graph["packforcing_core.cli.compressor"]   # in a function
    assert "packforcing_core.sampling.start" in graph["nodes.directing"]                      # ..packforcing_core
    assert any(t.startswith("comfy") for t, _ in imports(ROOT)["nodes.directing"])


# ----------------------------------------------------------------------------- a tree made wrong on purpose

def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_each_check_fails_on_a_bad_tree(tmp_path):
    _write(tmp_path, {
        "packforcing_core/__init__.py": "",
        "packforcing_core/io/__init__.py": "",
        "packforcing_core/io/files.py": "def f():\n    from ..cache.config import X\n",   # io -> cache, in a function
        "packforcing_core/cache/__init__.py": "",
        "packforcing_core/cache/config.py": "from ..io import files\nX = 1\n\n\ndef g():\n    import folder_paths\n",
        "packforcing_core/cache/spy.py": "from ...nodes import a\n",                        # out of the core
        "packforcing_core/model/__init__.py": "",
        "packforcing_core/model/big.py": "x = 1\n" * (MAX_LINES + 1),
        "packforcing_core/model/ok.py": "x = 1\n" * MAX_LINES,
        "packforcing_core/stray/__init__.py": "from ..io.files import f\n",               # not in LAYERS
        "nodes/__init__.py": "",
        "nodes/a.py": "def h():\n    from .b import y\n",
        "nodes/b.py": "from .a import h\ny = 1\n",
    })
    assert cycles(tmp_path) == [["nodes.a", "nodes.b"], ["packforcing_core.cache.config", "packforcing_core.io.files"]]
    assert comfy_imports(tmp_path) == ["packforcing_core.cache.config:6 imports folder_paths",
                                       "packforcing_core.cache.spy:1 imports nodes.a"]
    assert layer_violations(tmp_path) == [
        "packforcing_core.io.files:2 imports packforcing_core.cache.config ('io' may import nothing of the core)",
        "packforcing_core.stray: package 'stray' is not in LAYERS (add it, with what it may import)"]
    assert [line.split(":")[0] for line in long_files(tmp_path)] == ["packforcing_core/model/big.py"]
