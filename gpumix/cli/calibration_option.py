"""`--calibration` for every command that predicts: the CLI resolves the file once and passes a `Calibration` down.

The one place that looks at the environment and the home directory for calibration; the rule itself (explicit
file > $GPUMIX_CALIBRATION > ~/.config/gpumix/calibration.json > the packaged fit) is
`gpumix.calibrate.files.resolve_calibration_path`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gpumix.calibrate.files import load_calibration, machine_calibration_path, resolve_calibration_path
from gpumix.errors import GpumixError
from gpumix.estimate.calibration import Calibration

CALIBRATION_HELP = (
    "Calibration file from `gpumix tune` (default: $GPUMIX_CALIBRATION, else ~/.config/gpumix/calibration.json "
    "when it exists, else the packaged fit)."
)


@dataclass(frozen=True)
class ChosenCalibration:
    calibration: Calibration
    path: Path | None  # the file it came from; None = the packaged fit alone

    @property
    def name(self) -> str | None:
        """What a plan records as its calibration."""
        return None if self.path is None else str(self.path)


def cli_calibration(explicit: Path | None) -> ChosenCalibration:
    """The calibration a command uses, resolved from its --calibration option, the environment and the home dir."""
    path = resolve_calibration_path(explicit, os.environ, Path.home())
    return ChosenCalibration(load_calibration(path), path)


def cli_calibration_out(explicit: Path | None) -> Path:
    """Where `gpumix tune` writes this machine's calibration."""
    return machine_calibration_path(explicit, os.environ, Path.home())


def plan_calibration(file: Path, explicit: Path | None) -> tuple[Calibration | None, str | None]:
    """The calibration (and its file) to plan a YAML plan file with; a plan.json is already planned, so
    --calibration is refused there."""
    from gpumix.run.up import PLAN_SUFFIXES_YAML

    if file.suffix in PLAN_SUFFIXES_YAML:
        chosen = cli_calibration(explicit)
        return chosen.calibration, chosen.name
    if explicit is not None:
        raise GpumixError(
            f"--calibration applies to a plan file (YAML); {file} is already planned",
            hint="re-plan with `gpumix plan FILE.yaml --calibration CAL -o plan.json`, or pass the YAML to `gpumix up`",
        )
    return None, None


def recorded_calibration(plan_json: Path, recorded: str | None, explicit: Path | None) -> ChosenCalibration:
    """The calibration to predict with beside a plan already made (a plan.json): the file the plan records, when
    it is still there; else the packaged fit. --calibration is refused: the plan was made with its own."""
    if explicit is not None:
        raise GpumixError(
            f"--calibration applies to a plan file (YAML); {plan_json} is already planned"
            + (f" (with {recorded})" if recorded else ""),
            hint="pass the plan file (YAML) with --calibration, or re-plan it: `gpumix plan FILE.yaml --calibration CAL -o plan.json`",
        )
    if recorded and Path(recorded).is_file():
        return ChosenCalibration(load_calibration(Path(recorded)), Path(recorded))
    return ChosenCalibration(load_calibration(None), None)
