"""dvc.yaml's deps cover exactly the seqmnist modules each stage's command imports.

The import graph is read from the code (tests/support/imports.py); a stage missing a module
would leave `dvc status` clean after that module changed, and an extra one would rerun a stage
for nothing. The end-to-end check edits a module in a real DVC repo and asks `dvc status`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.imports import closure, module_file, stage_closure
from support.project import PROJECT_ROOT, make_project, run

SRC = PROJECT_ROOT / "src"
STAGES = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def _code_deps(stage: str) -> list[Path]:
    """The stage's deps under src/, as paths relative to src/."""
    deps = [Path(dep) for dep in STAGES[stage]["deps"]]
    return [dep.relative_to("src") for dep in deps if dep.parts[0] == "src"]


def _files_under(src: Path, dep: Path) -> set[Path]:
    path = src / dep
    if path.is_file():
        return {dep}
    return {
        item.relative_to(src)
        for item in path.rglob("*")
        if item.is_file() and "__pycache__" not in item.parts
    }


@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_cover_exactly_what_the_stage_imports(stage: str):
    imported = stage_closure(SRC, stage)
    declared = set().union(*(_files_under(SRC, dep) for dep in _code_deps(stage)))
    assert sorted(map(str, imported - declared)) == [], f"{stage} imports modules not in its deps"
    assert sorted(map(str, declared - imported)) == [], f"{stage} deps list modules it never uses"


def test_import_graph_sees_lazy_and_transitive_imports():
    train = stage_closure(SRC, "train")
    assert Path("seqmnist/modeling/fused_lstm.py") in train  # imported inside a function
    assert Path("seqmnist/modeling/kernels/lstm_sequence.cc") in train  # loaded, not imported
    assert Path("seqmnist/onnx/convert.py") not in train


@pytest.mark.slow
def test_editing_a_module_marks_exactly_the_stages_that_import_it(tmp_path: Path):
    """In a real DVC repo: every stage reproduced (cheaply faked by `dvc commit`), then one edit."""
    project = make_project(tmp_path / "project")
    for stage, spec in STAGES.items():
        for out in [*spec.get("outs", []), *[next(iter(m)) for m in spec.get("metrics", [])]]:
            target = project / (out if isinstance(out, str) else next(iter(out)))
            if target.suffix:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("{}")
            else:
                target.mkdir(parents=True, exist_ok=True)
                (target / "placeholder").write_text(stage)
    for spec in STAGES.values():
        for plot in spec.get("plots", []):
            target = project / next(iter(plot))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("x")
    run(["dvc", "commit", "--force", "--quiet"], project)
    assert "up to date" in run(["dvc", "status"], project).stdout

    edited = project / "src/seqmnist/data/dataset.py"
    edited.write_text(edited.read_text() + "\n# edited\n")
    status = yaml.safe_load(run(["dvc", "status", "--json"], project).stdout)
    changed = sorted(key.rsplit(":", 1)[-1] for key in status)
    users = sorted(s for s in STAGES if Path("seqmnist/data/dataset.py") in stage_closure(SRC, s))
    assert changed == users == ["evaluate", "export", "preprocess", "train"]


def test_the_cli_imports_only_its_module_level_closure_before_a_command_runs():
    """The deps count the CLI's module-level imports only: right only if building the parser
    (what every command does before its handler) imports nothing more, e.g. not the predictor."""
    probe = (
        "import json, sys; from seqmnist.cli import build_parser; build_parser(); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'seqmnist')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = {module_file(SRC, name).relative_to(SRC) for name in json.loads(done.stdout)}
    assert loaded == closure(SRC, ["seqmnist.cli"], top_level_roots=True)
