"""The per-machine calibration file `gpumix tune` writes and the estimator reads.

One entry per device tune measured: its achieved decode bandwidth and fixed per-token overhead (fitted on
llama-bench runs with the GGUF's exact tensor bytes). `gpumix.estimate` uses them for a device whose name or
catalog id equals `match`, instead of the catalog peak × fitted efficiency.

Location: `--calibration FILE`, else $GPUMIX_CALIBRATION, else ~/.config/gpumix/calibration.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpumix.errors import GpumixError

FORMAT_VERSION = 1
ENV_CALIBRATION = "GPUMIX_CALIBRATION"


def default_calibration_path() -> Path:
    env = os.environ.get(ENV_CALIBRATION)
    return Path(env) if env else Path.home() / ".config" / "gpumix" / "calibration.json"


class DeviceCalibration(BaseModel):
    """One device's measured speed on this machine."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    match: str  # device name or catalog id the estimator matches, e.g. "RPC0[127.0.0.1:50052]" or "rtx-4090"
    name: str
    achieved_bandwidth_gb_per_s: float = Field(gt=0)
    per_token_overhead_s: float = Field(ge=0)
    prefill_tflops: float | None = None
    measured: dict[str, Any] = Field(default_factory=dict)  # tokens_per_s, model_bytes, n_layers, runs ...


class MachineCalibration(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    method: str = ""  # how it was fitted, with the llama-bench commands
    host: str = Field(default_factory=socket.gethostname)
    devices: tuple[DeviceCalibration, ...] = ()

    def for_device(self, match: str) -> DeviceCalibration | None:
        key = match.lower()
        return next((d for d in self.devices if d.match.lower() == key), None)

    def merged_with(self, newer: MachineCalibration) -> MachineCalibration:
        """Keep this file's other devices; `newer`'s entries replace those with the same `match`."""
        replaced = {d.match.lower() for d in newer.devices}
        kept = tuple(d for d in self.devices if d.match.lower() not in replaced)
        return newer.model_copy(update={"devices": kept + newer.devices})


def load_machine_calibration(path: Path | str | None = None) -> MachineCalibration:
    path = Path(path) if path else default_calibration_path()
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise GpumixError(f"calibration file {path} does not exist", hint="run `gpumix tune` to create one") from exc
    except OSError as exc:
        raise GpumixError(f"cannot read calibration file {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GpumixError(f"{path}: not valid JSON ({exc})", hint="re-run `gpumix tune` to rewrite it") from exc
    if isinstance(data, dict) and data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise GpumixError(
            f"{path}: format_version {data.get('format_version')} is not supported (expected {FORMAT_VERSION})",
            hint="re-run `gpumix tune` with this gpumix to rewrite it",
        )
    try:
        return MachineCalibration.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise GpumixError(f"{path}: field '{field}': {first['msg']}", hint="re-run `gpumix tune`") from exc


def save_machine_calibration(cal: MachineCalibration, path: Path | str | None = None, merge: bool = True) -> Path:
    """Write `cal` (merged into an existing valid file at `path` unless merge=False); returns the path."""
    path = Path(path) if path else default_calibration_path()
    if merge and path.is_file():
        with contextlib.suppress(GpumixError):  # an unreadable old file is replaced, not merged
            cal = load_machine_calibration(path).merged_with(cal)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(cal.model_dump_json(indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise GpumixError(f"cannot write calibration file {path}: {exc}", hint="pass --calibration-out FILE") from exc
    return path
