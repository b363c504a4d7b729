"""The environment every seqmnist process and child runs with: telemetry off, in one place.

The CLI and the flow apply these as defaults (a user's own setting wins); `dvc` subprocesses of
the flow also get TQDM_DISABLE so progress bars do not flood the Prefect log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

TELEMETRY_OFF: Mapping[str, str] = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "DVC_STUDIO_OFFLINE": "1",
    "ORT_DISABLE_TELEMETRY": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
QUIET_CHILD_ENV: Mapping[str, str] = {**TELEMETRY_OFF, "TQDM_DISABLE": "1"}


def apply_defaults(environ: dict[str, str] | None = None) -> None:
    """Turn telemetry off in this process (and so in its children) unless already set."""
    target = os.environ if environ is None else environ
    for name, value in TELEMETRY_OFF.items():
        target.setdefault(name, value)
