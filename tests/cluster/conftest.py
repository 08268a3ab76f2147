"""A real Ray test cluster (`gpumix cluster local --hosts a,b`), started once per module that asks for it and
always torn down: `gpumix cluster down`, then SIGKILL to anything of its sessions still alive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "run"))  # runhelpers, fake_engine.py

from clusterhelpers import LocalCluster, kill_sessions  # noqa: E402

from gpumix.cluster.raycli import ray_installed  # noqa: E402

GPUMIX = [sys.executable, "-m", "gpumix"]


def cluster_env(config_dir: Path) -> dict[str, str]:
    return dict(os.environ) | {"GPUMIX_CONFIG_DIR": str(config_dir)}


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if not ray_installed():
        pytest.skip("the ray extra is not installed (pip install 'gpumix[ray]')")
    root = tmp_path_factory.mktemp("cluster")
    cluster_dir, config_dir = root / "cluster", root / "config"
    env = cluster_env(config_dir)
    cmd = [*GPUMIX, "cluster", "local", "--hosts", "a,b", "--json", "--cluster-dir", str(cluster_dir)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    cluster = None
    try:
        assert out.returncode == 0, out.stderr
        cluster = LocalCluster(info=json.loads(out.stdout), cluster_dir=cluster_dir, config_dir=config_dir, env=env)
        yield cluster
    finally:
        subprocess.run([*GPUMIX, "cluster", "down", "--cluster-dir", str(cluster_dir)], env=env, capture_output=True, timeout=120)
        if cluster is not None:
            kill_sessions(cluster)
