"""The run directory: state.json (written atomically by the supervisor), per-service logs, the plan it runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gpumix.fsutil import write_text_atomic
from gpumix.launch.llamacpp import cache_dir

ENV_RUN_DIR = "GPUMIX_RUN_DIR"
STATE_FILE = "state.json"
PLAN_FILE = "plan.json"
SUPERVISOR_LOG = "supervisor.log"

ProcessState = Literal["pending", "starting", "healthy", "unhealthy", "backoff", "stopping", "stopped", "failed"]


class ProcessStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    service: str
    kind: Literal["engine", "gateway"] = "engine"
    state: ProcessState = "pending"
    pid: int | None = None
    port: int
    url: str
    health_url: str
    log: str
    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    devices: list[str] = Field(default_factory=list)  # plan device ids (gpu0, HOST/gpu1)
    restarts: int = 0
    started_at: float | None = None  # unix time of the current process's start
    healthy_at: float | None = None
    last_exit_code: int | None = None
    last_error: str | None = None


class RunState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    supervisor_pid: int
    started_at: float
    updated_at: float = Field(default_factory=time.time)
    plan_path: str
    front_port: int | None = None
    stopping: bool = False
    message: str | None = None  # e.g. why the gateway was skipped
    host: str | None = None  # the plan host this run dir runs (`gpumix up --host`); None on a one-machine plan
    processes: list[ProcessStatus]

    def process(self, name: str) -> ProcessStatus:
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise KeyError(name)


def default_run_dir() -> Path:
    return Path(os.environ.get(ENV_RUN_DIR) or cache_dir() / "run" / "default")


def write_state(run_dir: Path, state: RunState) -> None:
    """Write to a temp file and rename over state.json: readers never see a half-written file."""
    state.updated_at = time.time()
    write_text_atomic(run_dir / STATE_FILE, state.model_dump_json(indent=2))


def read_state(run_dir: Path) -> RunState | None:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return None
    return RunState.model_validate(json.loads(path.read_text()))
