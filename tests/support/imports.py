"""seqmnist's own import graph, read from the source with `ast` (nothing is imported).

What a stage's process imports is the CLI's module-level imports plus everything its stage module
imports, transitively, function-level imports included (conservative: a lazy import may run).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "seqmnist"
# Files a module loads at run time without importing them.
DATA_FILES = {"seqmnist/modeling/fused_lstm.py": ["seqmnist/modeling/kernels/lstm_sequence.cc"]}


def module_file(src: Path, module: str) -> Path | None:
    base = src.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(tree: ast.AST, module: str, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join([*module.split(".")[: -node.level], node.module])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == PACKAGE}


def _with_parents(module: str) -> list[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(src: Path, roots: list[str], top_level_roots: bool = False) -> set[Path]:
    """Files (relative to `src`'s parent folder... i.e. as `seqmnist/x.py`) that `roots` import."""
    seen: set[str] = set()
    files: set[str] = set()
    pending = [(root, top_level_roots) for root in roots]
    while pending:
        module, top_only = pending.pop()
        for name in _with_parents(module):
            path = module_file(src, name)
            if path is None or (name, top_only) in seen:
                continue
            seen.add((name, top_only))
            relative = path.relative_to(src).as_posix()
            files.add(relative)
            files |= set(DATA_FILES.get(relative, []))
            only_top = top_only and name == module
            tree = ast.parse(path.read_text(), filename=str(path))
            pending += [(found, False) for found in _imported_modules(tree, name, only_top)]
    return {Path(item) for item in files}


def stage_closure(src: Path, stage: str) -> set[Path]:
    """Everything `seqmnist <stage>` imports: the CLI's module-level imports and the stage's."""
    return closure(src, ["seqmnist.cli"], top_level_roots=True) | closure(
        src, [f"seqmnist.stages.{stage}"]
    )
