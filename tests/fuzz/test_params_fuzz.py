"""Fuzzing the params schema (seqmnist.config): the shipped params.yaml with values of the wrong
type, unknown keys, missing sections, then dumped as YAML and mangled into text that may not be
YAML at all. Only ConfigError may escape, naming the file and the field at fault; what is
accepted must survive a round trip; memory follows the file's size.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from seqmnist.config import (
    ConfigError,
    GateParams,
    Params,
    PublishParams,
    load_params,
    load_section,
    parse_params,
)
from support.fuzzing import fuzz_settings, measure, note_input, timeout_s
from support.project import PROJECT_ROOT

pytestmark = pytest.mark.timeout(timeout_s())

SHIPPED = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
SOURCE = Path("fuzzed/params.yaml")
# PyYAML keeps tokens, events and nodes per character (the shipped 3 KiB file peaks near 65 KiB).
YAML_MEMORY_FACTOR = 64
YAML_OVERHEAD = 1 << 20
# Deeper than the interpreter's recursion limit once PyYAML's frames per level are counted.
TOO_DEEP = 1000
# Every section read alone by what runs after the stages (registry.gate, registry.publish).
SECTIONS = {"gate": GateParams, "publish": PublishParams}
KeyPath = tuple[str, ...]


def _paths(node: object, prefix: KeyPath = ()) -> list[KeyPath]:
    """Every key path in a nested mapping: sections, subsections and leaves."""
    if not isinstance(node, dict):
        return []
    found = []
    for key, value in node.items():
        found.append((*prefix, key))
        found += _paths(value, (*prefix, key))
    return found


PATHS = _paths(SHIPPED)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.dates()
    | st.sampled_from([0, -1, 1, 1.0e-12, "lstm", "cosine", "origin", ""])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _parent(tree: dict, path: KeyPath) -> dict | None:
    node: object = tree
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


@st.composite
def mutated_params(draw: st.DrawFn) -> tuple[object, list[KeyPath]]:
    """(params as loaded from YAML, the dotted paths that were changed)."""
    if draw(st.integers(0, 19)) == 0:
        event("params: not a mapping")
        return draw(values.filter(lambda value: not isinstance(value, dict))), [()]
    tree = copy.deepcopy(SHIPPED)
    changed = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "delete", "add"]))
        event(f"mutation: {kind}")
        path = draw(st.sampled_from(PATHS))
        parent = _parent(tree, path)
        if parent is None:
            continue
        if kind == "replace":
            parent[path[-1]] = draw(values)
        elif kind == "delete":
            parent.pop(path[-1], None)
        else:
            key = draw(st.text(min_size=1, max_size=8))
            path = (*path[:-1], key)
            parent[key] = draw(values)
        changed.append(path)
    return tree, changed


@fuzz_settings()
@given(sample=mutated_params())
def test_mutated_params_are_accepted_or_named(sample: tuple[object, list[KeyPath]]) -> None:
    note_input()
    raw, changed = sample
    try:
        params = parse_params(raw, SOURCE)
    except ConfigError as exc:
        message = str(exc)
        event("refused")
        assert message.startswith(f"{SOURCE}: ")
        named = [".".join(path) for path in changed if ".".join(path) in message]
        assert named or changed == [()], f"no changed field named in: {message}"
        return
    event("accepted")
    assert isinstance(params, Params)
    assert parse_params(params.model_dump(), SOURCE) == params


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """YAML dumped from mutated params, then maybe mangled as text."""
    raw, _ = draw(mutated_params())
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    damage = draw(st.sampled_from(["none", "insert", "cut", "replace", "prefix"]))
    event(f"text: {damage}")
    position = draw(st.integers(0, len(text)))
    if damage == "insert":
        return text[:position] + draw(st.text(max_size=8)) + text[position:]
    if damage == "cut":
        return text[:position]
    if damage == "replace":
        return draw(st.text(max_size=64))
    if damage == "prefix":
        return (
            draw(st.sampled_from(["%YAML 9.9\n", "\t", "--- !!python/object:os.system\n"])) + text
        )
    return text


@fuzz_settings(share=0.5)
@given(text=yaml_texts())
def test_params_files(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    note_input()
    path = tmp_path_factory.getbasetemp() / "fuzzed-params.yaml"
    path.write_text(text, encoding="utf-8")
    _check_loads(path, lambda: load_params(path))
    for name, model in SECTIONS.items():
        try:
            load_section(path, name, model)
        except ConfigError as exc:
            assert str(path) in str(exc)


def _check_loads(path: Path, load) -> None:
    """`load` returns or raises ConfigError naming `path`, within memory proportional to it."""
    measured = measure(load)
    if measured.error is not None:
        if not isinstance(measured.error, ConfigError):
            raise measured.error
        assert str(path) in str(measured.error)
    assert measured.peak_bytes < YAML_MEMORY_FACTOR * path.stat().st_size + YAML_OVERHEAD


# --- what makes reading params.yaml itself fail: bytes, nesting, aliases, I/O -------------------


@fuzz_settings(share=0.1)
@given(junk=st.binary(min_size=1, max_size=4).filter(lambda data: _not_utf8(data)))
def test_bytes_that_are_not_utf8(tmp_path_factory: pytest.TempPathFactory, junk: bytes) -> None:
    """Latin-1 or binary bytes in params.yaml: UnicodeDecodeError escaped."""
    note_input()
    path = tmp_path_factory.getbasetemp() / "latin1-params.yaml"
    path.write_bytes(b"download:\n  mirrors: ['" + junk + b"']\n")
    _check_loads(path, lambda: load_params(path))


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a: ", "}")], ids=["list", "mapping"])
def test_yaml_nested_too_deeply(tmp_path: Path, opening: str, closing: str) -> None:
    """A 5 KiB file of nested brackets: PyYAML's RecursionError escaped."""
    path = tmp_path / "params.yaml"
    path.write_text(opening * TOO_DEEP + closing * TOO_DEEP)
    with pytest.raises(ConfigError, match=str(path)):
        load_params(path)


def test_yaml_alias_bomb(tmp_path: Path) -> None:
    """360 bytes of YAML aliases expand to 100,000 items when quoted in the error message:
    11 MiB and seconds here, every level more ten times that (the billion laughs)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 6)]
    path = tmp_path / "params.yaml"
    path.write_text("\n".join([*lines, "download: {mirrors: [m]}", ""]))
    _check_loads(path, lambda: load_params(path))


UNREADABLE = Path("/proc/self/mem")  # a regular file whose first read fails (EIO), even as root


@pytest.mark.skipif(not UNREADABLE.is_file(), reason="needs Linux's /proc/self/mem")
def test_unreadable_params_file() -> None:
    """Permission denied or an I/O error: OSError escaped."""
    _check_loads(UNREADABLE, lambda: load_params(UNREADABLE))
