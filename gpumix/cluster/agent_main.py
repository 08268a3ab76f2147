"""The supervisor process of one host agent: `python -m gpumix.cluster.agent_main RUN_DIR`.

The agent actor starts it with a pipe on stdin and never writes to it: when the actor's worker process dies
for any reason (ray.kill, SIGKILL, its raylet gone), the kernel closes the pipe, this process reads EOF and
stops its engines. PR_SET_PDEATHSIG (set by the actor) is the second line, and the supervisor's own
children get one too, so no engine outlives its agent.

RUN_DIR holds plan.json and agent.json (the LaunchSpecs and supervisor settings), written by the actor.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import fields
from pathlib import Path

from gpumix.launch.spec import LaunchSpec
from gpumix.plan.result import Plan
from gpumix.run.supervisor import Supervisor, SupervisorSettings

AGENT_FILE = "agent.json"
PLAN_FILE = "plan.json"


def write_agent_files(run_dir: Path, plan: Plan, specs: list[LaunchSpec], settings: SupervisorSettings) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PLAN_FILE).write_text(plan.model_dump_json(indent=2))
    body = {"specs": [s.model_dump(mode="json") for s in specs], "settings": {f.name: getattr(settings, f.name) for f in fields(settings)}}
    (run_dir / AGENT_FILE).write_text(json.dumps(body, indent=2))


def read_agent_files(run_dir: Path) -> tuple[Plan, list[LaunchSpec], SupervisorSettings]:
    plan = Plan.model_validate_json((run_dir / PLAN_FILE).read_text())
    body = json.loads((run_dir / AGENT_FILE).read_text())
    return plan, [LaunchSpec.model_validate(s) for s in body["specs"]], SupervisorSettings(**body["settings"])


def _stop_on_eof(supervisor: Supervisor) -> None:
    """Block on the lifeline; EOF (or any error) means the agent is gone."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        supervisor.request_stop()


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0])
    plan, specs, settings = read_agent_files(run_dir)
    supervisor = Supervisor(plan, specs, run_dir, run_dir / PLAN_FILE, None, settings)
    supervisor.install_signal_handlers()  # main thread: SIGTERM/SIGINT stop everything cleanly
    threading.Thread(target=_stop_on_eof, args=(supervisor,), name="lifeline", daemon=True).start()
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
