"""Checkpoints of a training run (checkpoints/train/, outside DVC's outputs, which DVC deletes
before a stage runs) and saved archives whose bytes depend on the model alone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path

from seqmnist.io import atomic_dir, write_json
from seqmnist.modeling.training import TrainingState

CHECKPOINT_MODEL = "last.keras"
CHECKPOINT_BEST = "best.weights.h5"
CHECKPOINT_STATE = "state.json"
PINNED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date, as Keras uses
PINNED_DATE_SAVED = "1980-01-01@00:00:00"


def load_state(checkpoint_dir: Path, expected: str) -> TrainingState | None:
    state_path = checkpoint_dir / CHECKPOINT_STATE
    if not (state_path.is_file() and (checkpoint_dir / CHECKPOINT_MODEL).is_file()):
        return None
    try:
        state = TrainingState(**json.loads(state_path.read_text()))
    except (ValueError, TypeError):
        return None
    return state if state.fingerprint == expected else None


def rng_states(model) -> dict[str, list[int]]:
    """The state of every layer's seed generator (dropout masks), by layer name."""
    return {
        layer.name: [int(value) for value in layer.seed_generator.state.numpy()]
        for layer in model.layers
        if getattr(layer, "seed_generator", None) is not None
    }


def restore_rng_states(model, states: dict[str, list[int]]) -> None:
    """Put back the seed generators' states of a checkpoint into the reloaded model."""
    import numpy as np

    for name, values in states.items():
        state = model.get_layer(name).seed_generator.state
        state.assign(np.asarray(values, dtype=state.dtype))


def save_checkpoint(model, state: TrainingState, checkpoint_dir: Path, improved: bool) -> None:
    """The whole checkpoint (model, best weights, state) replaces the previous one at once.

    Written into a staging folder that is renamed into place, so a kill at any moment leaves the
    previous epoch's checkpoint or this one, never this epoch's weights with the last epoch's
    state. The best weights are the ones validation scored: the average when weights are averaged.
    """
    from seqmnist.modeling.averaging import averaged_weights

    previous_best = checkpoint_dir / CHECKPOINT_BEST
    with atomic_dir(checkpoint_dir) as staging:
        if improved:
            with averaged_weights(model):
                model.save_weights(staging / CHECKPOINT_BEST)
        else:
            os.link(previous_best, staging / CHECKPOINT_BEST)
        model.save(staging / CHECKPOINT_MODEL)
        state.rng_states = rng_states(model)
        write_json(staging / CHECKPOINT_STATE, asdict(state))


def discard_checkpoint(checkpoint_dir: Path) -> None:
    """Remove the checkpoint at once, with what killed runs left beside it.

    Renamed aside before it is deleted: a kill in the middle of deleting it in place could leave
    state.json and last.keras without best.weights.h5, which a rerun would resume from and then
    fail to load. Staging folders of runs killed while checkpointing (`.train.*`) go too; only
    one run trains in a project at a time.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if checkpoint_dir.exists():
        holder = Path(
            tempfile.mkdtemp(prefix=f".{checkpoint_dir.name}.", dir=checkpoint_dir.parent)
        )
        os.replace(checkpoint_dir, holder / checkpoint_dir.name)
    if checkpoint_dir.parent.is_dir():
        for leftover in checkpoint_dir.parent.glob(f".{checkpoint_dir.name}.*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _renumber_shared_objects(node, numbers: dict[int, int]):
    """Replace Keras's `shared_object_id`s (Python object addresses) by 1, 2, ... in order."""
    if isinstance(node, list):
        return [_renumber_shared_objects(item, numbers) for item in node]
    if not isinstance(node, dict):
        return node
    renumbered = {key: _renumber_shared_objects(value, numbers) for key, value in node.items()}
    if "shared_object_id" in node:
        identity = node["shared_object_id"]
        renumbered["shared_object_id"] = numbers.setdefault(identity, len(numbers) + 1)
    return renumbered


def pin_archive(path: Path) -> None:
    """Rewrite a saved .keras archive so that its bytes depend on the model alone.

    Keras stamps the save time into the archive and numbers shared objects by their memory
    address, so identical weights gave a different file on every save: a rerun on the same
    commit changed the model's DVC hash and reran evaluate/export for nothing. Entry times and
    `date_saved` are pinned and shared objects renumbered in order of appearance;
    model_info.json says where a model came from.
    """
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":
                data = json.dumps({**json.loads(data), "date_saved": PINNED_DATE_SAVED}).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
            pinned = zipfile.ZipInfo(info.filename, date_time=PINNED_ZIP_TIME)
            pinned.compress_type, pinned.external_attr = info.compress_type, info.external_attr
            archive.writestr(pinned, data)
