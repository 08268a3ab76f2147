"""Run a Supervisor over fake engines on the main thread, as `gpumix up` does (used by test_signals.py).

usage: python supervise_fakes.py RUN_DIR NAME [NAME...]"""

import sys
from pathlib import Path

from runhelpers import fake_plan, fake_spec

from gpumix.run.supervisor import Supervisor, SupervisorSettings

run_dir = Path(sys.argv[1])
names = sys.argv[2:]
specs = [fake_spec(name) for name in names]
settings = SupervisorSettings(stagger_gpu_s=0, stagger_cpu_s=0, health_interval_s=0.2, stop_timeout_s=2, poll_s=0.05)
supervisor = Supervisor(fake_plan(names), specs, run_dir, run_dir / "plan.json", None, settings)
supervisor.install_signal_handlers()
sys.exit(supervisor.run())
