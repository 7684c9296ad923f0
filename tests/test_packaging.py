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
