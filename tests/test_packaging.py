"""Layout and dependencies: one import namespace; the runtime never loads torch/transformers."""

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO

RUNTIME_MODULES = ["edgespec.runtime", "edgespec.runtime.generator", "edgespec.runtime.model",
                   "edgespec.runtime.evaluate", "edgespec.runtime.drafters", "edgespec.manifest",
                   "edgespec.sampling", "edgespec.accept", "edgespec.tree", "edgespec.masks",
                   "edgespec.cli", "edgespec.graph_contract", "edgespec.drafter_options",
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


def _imports(tree):
    """Import nodes of a module, function-level ones included, except `if TYPE_CHECKING:`."""
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_no_import_cycles():
    """Between the package's modules, lazy (function-level) imports counted too."""
    import ast

    folders = {"edgespec": "edgespec", "edgespec.runtime": "runtime", "edgespec.export": "export",
               "edgespec.models": "models", "edgespec.devices": "devices"}
    mods = {(pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"): f
            for pkg, folder in folders.items() for f in (REPO / folder).glob("*.py")}
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
    assert len(mods) > 50
