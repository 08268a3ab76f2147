"""Calibration files: the one reader and writer of this machine's calibration, and the rule that picks the file.

`gpumix tune` writes a *machine calibration*: one entry per device it measured, with the achieved decode bandwidth
and fixed per-token overhead fitted on llama-bench runs with the GGUF's exact tensor bytes. The estimator uses an
entry for a device whose name or catalog id equals `match`, instead of the catalog peak × fitted efficiency.

    {"format_version": 1, "created": "...", "method": "...", "host": "...",
     "devices": [{"match": "rtx-4090", "name": "RTX 4090", "achieved_bandwidth_gb_per_s": 905.0,
                  "per_token_overhead_s": 0.0012, "prefill_tflops": 95.0, "measured": {...}}]}

`load_calibration(path)` turns such a file into the `Calibration` the core takes: the packaged fit plus the
file's measurements. It also accepts a whole *fitted* calibration (a JSON with `backends`, as written by
`python -m gpumix.calibrate.fit -o FILE`), so a refit can be validated or planned with before it is committed.

Which file a command uses (`resolve_calibration_path`, called by the CLI only, with the environment and home
directory passed in): `--calibration FILE`, else $GPUMIX_CALIBRATION, else ~/.config/gpumix/calibration.json when it
exists, else none (the packaged fit alone). `gpumix tune` writes to `machine_calibration_path` (the same order,
without the existence check).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpumix.errors import GpumixError, first_validation_problem
from gpumix.estimate.calibration import (
    Calibration,
    DeviceMeasurement,
    calibration_from_json,
    check_format_version,
    default_calibration,
)

FORMAT_VERSION = 1  # of the machine calibration file
ENV_CALIBRATION = "GPUMIX_CALIBRATION"
HOME_CALIBRATION = Path(".config") / "gpumix" / "calibration.json"  # relative to the user's home directory
_REWRITE_HINT = "re-run `gpumix tune` to rewrite it"


class DeviceCalibration(BaseModel):
    """One device's measured speed on this machine."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    match: str  # device name or catalog id the estimator matches, e.g. "RPC0[127.0.0.1:50052]" or "rtx-4090"
    name: str
    achieved_bandwidth_gb_per_s: float = Field(gt=0)
    per_token_overhead_s: float = Field(ge=0)
    prefill_tflops: float | None = Field(default=None, gt=0)
    measured: dict[str, Any] = Field(default_factory=dict)  # tokens_per_s, model_bytes, n_layers, runs ...

    def measurement(self) -> DeviceMeasurement:
        """What the estimator uses of this entry."""
        return DeviceMeasurement(
            match=self.match,
            achieved_bandwidth_gb_per_s=self.achieved_bandwidth_gb_per_s,
            per_token_overhead_s=self.per_token_overhead_s,
            prefill_tflops=self.prefill_tflops,
        )


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


# ---------------------------------------------------------------------------------------------- which file


def machine_calibration_path(explicit: Path | None, environ: Mapping[str, str], home: Path) -> Path:
    """Where this machine's calibration lives: `explicit`, else $GPUMIX_CALIBRATION, else ~/.config/gpumix/."""
    if explicit is not None:
        return explicit
    if environ.get(ENV_CALIBRATION):
        return Path(environ[ENV_CALIBRATION])
    return home / HOME_CALIBRATION


def resolve_calibration_path(explicit: Path | None, environ: Mapping[str, str], home: Path) -> Path | None:
    """The machine calibration file a command reads, or None for the packaged fit alone.

    An explicit file or $GPUMIX_CALIBRATION must exist (a name that points nowhere is an error, not a silent
    fallback); the file in the home directory is used only when it exists."""
    path = machine_calibration_path(explicit, environ, home)
    if explicit is None and environ.get(ENV_CALIBRATION) and not path.is_file():
        raise GpumixError(
            f"${ENV_CALIBRATION} names {path}, which does not exist",
            hint=f"run `gpumix tune --calibration-out {path}` to create it, or unset {ENV_CALIBRATION}",
        )
    if explicit is None and not environ.get(ENV_CALIBRATION) and not path.is_file():
        return None
    return path


# ---------------------------------------------------------------------------------------------- read and write


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise GpumixError(f"calibration file {path} does not exist", hint="run `gpumix tune` to create one") from exc
    except IsADirectoryError as exc:
        raise GpumixError(f"calibration file {path} is a directory", hint="pass the JSON file itself") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise GpumixError(f"cannot read calibration file {path}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GpumixError(f"{path}: not valid JSON ({exc})", hint=_REWRITE_HINT) from exc


def _machine_from_json(data: Any, path: Path) -> MachineCalibration:
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise GpumixError(f"{path}: missing field 'devices' (a list)", hint=_REWRITE_HINT)
    check_format_version(data, FORMAT_VERSION, str(path), _REWRITE_HINT)
    try:
        return MachineCalibration.model_validate(data)
    except ValidationError as exc:
        field, message = first_validation_problem(exc)
        raise GpumixError(f"{path}: field '{field}': {message}", hint=_REWRITE_HINT) from None


def load_machine_calibration(path: Path) -> MachineCalibration:
    """This machine's calibration file as `gpumix tune` wrote it; every problem is a one-line error naming the
    file and the field."""
    return _machine_from_json(_read_json(path), path)


def save_machine_calibration(cal: MachineCalibration, path: Path, merge: bool = True) -> Path:
    """Write `cal` (merged into an existing valid file at `path` unless merge=False); returns the path."""
    if merge and path.is_file():
        with contextlib.suppress(GpumixError):  # an unreadable old file is replaced, not merged
            cal = load_machine_calibration(path).merged_with(cal)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(cal.model_dump_json(indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise GpumixError(f"cannot write calibration file {path}: {exc}", hint="pass --calibration-out FILE") from exc
    return path


def load_calibration(path: Path | None) -> Calibration:
    """The `Calibration` for the core: the packaged fit plus the machine measurements in `path` (None: the
    packaged fit alone). A file holding a whole fitted calibration (`backends`) replaces the packaged fit."""
    base = default_calibration()
    if path is None:
        return base
    data = _read_json(path)
    if isinstance(data, dict) and "backends" in data:
        return calibration_from_json(data, str(path), "re-run `python -m gpumix.calibrate.fit -o FILE` to rewrite it")
    machine = _machine_from_json(data, path)
    return base.model_copy(update={"measurements": tuple(d.measurement() for d in machine.devices)})
