"""params.yaml is the one source of defaults: every code default equals the shipped value."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel

from seqmnist.config import ConfigError, Params, load_params, parse_params
from support.project import PROJECT_ROOT

SHIPPED = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def _defaults(model: type[BaseModel], shipped: dict, prefix: str = ""):
    """(dotted field, code default, shipped value) for every field that has a default."""
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        assert name in shipped, f"params.yaml has no {dotted}: every tunable must be shipped there"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _defaults(annotation, shipped[name], f"{dotted}.")
        elif not field.is_required():
            yield dotted, field.get_default(call_default_factory=True), shipped[name]


def test_every_code_default_equals_params_yaml():
    checked = list(_defaults(Params, SHIPPED))
    assert len(checked) > 20
    mismatched = [(name, code, shipped) for name, code, shipped in checked if code != shipped]
    assert mismatched == [], "code defaults that disagree with params.yaml (field, code, yaml)"


def test_params_yaml_holds_only_known_fields():
    assert (
        load_params(PROJECT_ROOT / "params.yaml").model_dump() == parse_params(SHIPPED).model_dump()
    )
    with pytest.raises(ConfigError, match=r"train\.nope"):
        parse_params({**SHIPPED, "train": {**SHIPPED["train"], "nope": 1}})
