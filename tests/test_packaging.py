"""Layout and dependencies: one import namespace; the runtime never loads torch/transformers."""

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO

RUNTIME_MODULES = ["edgespec.runtime", "edgespec.runtime.generator", "edgespec.runtime.model",
                   "edgespec.runtime.evaluate", "edgespec.runtime.drafters", "edgespec.manifest",
                   "edgespec.sampling", "edgespec.runtime.accept", "edgespec.tree", "edgespec.masks",
                   "edgespec.cli", "edgespec.cli.commands", "edgespec.graph_contract", "edgespec.drafter_options",
                   "edgespec.runtime.bundle_checks", "edgespec.devices.soak"]


def _py(code: str) -> subprocess.CompletedProcess:
    # run outside the repo, so only the installed package (editable or wheel) can be found
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd="/", timeout=120)


def test_runtime_imports_neither_torch_nor_transformers():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in RUNTIME_MODULES) +
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'})\n"
            "assert not bad, bad\nprint('clean')")
    r = _py(code)
    assert r.returncode == 0 and "clean" in r.stdout, r.stderr


def test_missing_onnxruntime_names_both_extras():
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from edgespec.runtime.providers import import_ort\n"
            "try:\n    import_ort()\nexcept ImportError as e:\n    print(e)\n")
    out = _py(code).stdout
    assert "edgespec[cpu]" in out and "edgespec[gpu]" in out


def test_top_level_names_are_not_importable():
    for name in ("runtime", "export", "models"):
        r = _py(f"import {name}")
        assert r.returncode != 0, name  # only edgespec.<name> exists


def test_built_wheel_imports_runtime(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("edgespec-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgespec/runtime/generator.py" in names and "edgespec/export/pipeline.py" in names
    assert not any(n.startswith(("demo/", "runtime/", "tests/")) for n in names)
    assert not any(n.endswith(".safetensors") for n in names)  # the demo model stays out
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    r = subprocess.run([sys.executable, "-I", "-c",
                        "import sys; sys.path.insert(0, sys.argv[1]); import edgespec.runtime, "
                        "edgespec.runtime.model; print(edgespec.runtime.__file__)", str(site)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).is_relative_to(site)


FOLDERS = {"edgespec": "edgespec", "edgespec.runtime": "runtime", "edgespec.export": "export",
           "edgespec.models": "models", "edgespec.devices": "devices"}

# The layers, top to bottom: each group and the groups it may import (itself included). The CLI
# may import anything; the contract (edgespec/'s own modules: manifest, errors, files, the numpy
# helpers) imports only itself; the torch definitions never import the runtime.
LAYERS = {
    "cli": {"cli", "export", "train", "serve", "devices", "runtime", "models", "contract"},
    "export": {"export", "train", "devices", "runtime", "models", "contract"},
    "train": {"train", "runtime", "models", "contract"},
    "serve": {"serve", "runtime", "contract"},
    "devices": {"devices", "runtime", "contract"},
    "runtime": {"runtime", "contract"},
    "models": {"models", "contract"},
    "contract": {"contract"},
}
GROUPS = [("edgespec.cli", "cli"), ("edgespec.export.train", "train"), ("edgespec.export", "export"),
          ("edgespec.runtime.serve", "serve"), ("edgespec.runtime", "runtime"),
          ("edgespec.devices", "devices"), ("edgespec.models", "models"), ("edgespec", "contract")]


def _group(module: str) -> str:
    return next(g for prefix, g in GROUPS if module == prefix or module.startswith(prefix + "."))


def _imports(tree):
    """Import nodes of a module, function-level ones included, except `if TYPE_CHECKING:`."""
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _module_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (subfolders included)."""
    import ast

    mods = {}
    for pkg, folder in FOLDERS.items():
        for f in (REPO / folder).rglob("*.py"):
            parts = f.relative_to(REPO / folder).with_suffix("").parts
            mods[".".join((pkg, *(parts[:-1] if parts[-1] == "__init__" else parts)))] = f
    graph = {}
    for name, path in mods.items():
        package = name if path.stem == "__init__" else name.rpartition(".")[0]
        targets = set()
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
                continue
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            module = (f"{base}.{node.module}" if node.module else base) if node.level \
                else node.module
            targets |= {module, *(f"{module}.{a.name}" for a in node.names)}
        graph[name] = {t for t in targets if t in mods and t != name}
    return graph


def test_no_import_cycles():
    """Between the package's modules, lazy (function-level) imports counted too."""
    graph = _module_graph()
    done, path_stack = set(), []

    def visit(node):
        if node in path_stack:
            raise AssertionError("import cycle: " + " -> ".join(
                path_stack[path_stack.index(node):] + [node]))
        if node in done:
            return
        path_stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        path_stack.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)
    assert len(graph) > 50


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if _group(b) not in LAYERS[_group(a)])


def test_imports_go_down_the_layers():
    """CLI -> export / train / serve / devices -> runtime -> contract, and models/ (torch
    definitions) under export and train only: no import, lazy ones included, goes up."""
    graph = _module_graph()
    assert not _upward(graph), _upward(graph)
    assert {_group(m) for m in graph} == set(LAYERS)  # every layer still has modules


def test_the_layer_check_sees_upward_imports():
    assert _upward({"edgespec.models.llama": {"edgespec.runtime.model"},  # torch -> runtime
                    "edgespec.runtime.model": {"edgespec.runtime.serve.server"},
                    "edgespec.export.train.distill": {"edgespec.export.pipeline"},
                    "edgespec.manifest": {"edgespec.cli.commands"},
                    "edgespec.runtime.generator": {"edgespec.runtime.accept", "edgespec.tree"},
                    }) == ["edgespec.export.train.distill -> edgespec.export.pipeline",
                           "edgespec.manifest -> edgespec.cli.commands",
                           "edgespec.models.llama -> edgespec.runtime.model",
                           "edgespec.runtime.model -> edgespec.runtime.serve.server"]
