"""params.yaml, validated once at the edge into typed, immutable objects.

Every stage takes one of these objects; nothing downstream re-reads or re-checks raw YAML.
params.yaml is the one source of every default: the defaults below exist so that code and tests
can override one field and keep the rest, and tests/unit/core/test_config.py proves each equals
the shipped params.yaml.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from seqmnist.errors import ConfigError
from seqmnist.paths import PARAMS_FILE

# Wrong values are quoted this briefly: a few hundred bytes of YAML aliases can name billions of
# items (the "billion laughs"), which a full repr() would spell out.
_QUOTE = reprlib.Repr()
_QUOTE.maxlevel, _QUOTE.maxstring, _QUOTE.maxother = 3, 80, 80

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
# What trains the LSTM layers (modeling.training.resolve_backend): our C++ kernel, Keras's own
# layers, or whichever suits the machine.
LstmBackend = Literal["auto", "kernel", "keras"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class DownloadParams(_Frozen):
    mirrors: list[str] = Field(min_length=1)
    connect_timeout_s: PositiveFloat = 10.0
    read_timeout_s: PositiveFloat = 60.0
    attempts_per_mirror: PositiveInt = 3
    backoff_s: Annotated[float, Field(ge=0)] = 1.0


class PreprocessParams(_Frozen):
    validation_size: PositiveInt = 5000
    seed: int = 42


class ModelParams(_Frozen):
    cell: Literal["lstm", "gru", "simple_rnn"] = "lstm"
    units: PositiveInt = 128
    layers: PositiveInt = 1
    bidirectional: bool = False
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.3
    input_projection: PositiveInt | None = 128
    readout: Literal["last", "max", "mean"] = "last"


class TrainParams(_Frozen):
    seed: int = 42
    max_train_samples: PositiveInt | None = None
    model: ModelParams = ModelParams()
    epochs: PositiveInt = 26
    batch_size: PositiveInt = 256
    augment_max_shift: Annotated[int, Field(ge=0, le=8)] = 2
    augment_max_degrees: Annotated[float, Field(ge=0, le=45)] = 15.0
    augment_max_scale: Annotated[float, Field(ge=0, le=0.5)] = 0.15
    augment_elastic_pixels: Annotated[float, Field(ge=0, le=4)] = 0.0
    augment_elastic_grid: Annotated[int, Field(ge=2, le=14)] = 4  # > 14: per-pixel jitter
    augment_off_last_epochs: Annotated[int, Field(ge=0)] = 0
    learning_rate: PositiveFloat = 0.003
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.1
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_epochs: Annotated[int, Field(ge=0)] = 1
    early_stopping_patience: PositiveInt = 8
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.999
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    lstm_backend: LstmBackend = "auto"


class EvaluateParams(_Frozen):
    misclassified_grid: PositiveInt = 25


class ExportParams(_Frozen):
    opset: Annotated[int, Field(ge=17, le=18)] = 17
    quantize_int8: bool = True
    parity_atol: PositiveFloat = 1e-5


class GateParams(_Frozen):
    min_test_accuracy: Annotated[float, Field(ge=0, le=1)] = 0.99
    max_regression: Annotated[float, Field(ge=0, le=1)] = 0.002


class PublishParams(_Frozen):
    artifact: str = "seqmnist-rnn"
    branch: str | None = None
    git_remote: str = "origin"
    stage: str = "prod"
    push_attempts: PositiveInt = 3


class Params(_Frozen):
    download: DownloadParams
    preprocess: PreprocessParams = PreprocessParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    gate: GateParams = GateParams()
    publish: PublishParams = PublishParams()


def _describe(error: ValidationError, source: Path) -> str:
    lines = [f"{source}: invalid parameters"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        got = item.get("input")
        lines.append(f"  {field}: {item['msg']} (got {_QUOTE.repr(got)})")
    return "\n".join(lines)


def parse_params(raw: object, source: Path = PARAMS_FILE) -> Params:
    """Validate an already-loaded params mapping; errors name the file and the dotted field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of stage names to parameters")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def _read_yaml(path: Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found (run from the project root)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the parameters file ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to hold parameters") from None


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    return parse_params(_read_yaml(path), Path(path))


Section = TypeVar("Section", bound=BaseModel)


def load_section(path: Path, name: str, model: type[Section]) -> Section:
    """One section of params.yaml alone (defaults where absent), e.g. `gate` or `publish`:
    what runs after the stages must not depend on the stages' params being valid."""
    raw = _read_yaml(path) or {}
    section = (raw.get(name) if isinstance(raw, dict) else None) or {}
    try:
        return model.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, Path(path)).replace("\n  ", f"\n  {name}.")) from None
