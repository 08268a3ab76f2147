"""The cluster's pure parts, no Ray process: names, the token file, `ray start` command lines, engine binding,
actor options, agent specs, and what every cluster command says when Ray is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clusterhelpers import FAST, agent_spec, fake_engine_spec
from runhelpers import fake_plan

from gpumix.cluster.agent import AgentSpec, DeviceClaim, actor_options, bind_to_node, bundles_of, wildcard_binds
from gpumix.cluster.auth import auth_env, check_token_file, ensure_token, with_auth
from gpumix.cluster.names import (
    HOST_LABEL,
    check_host_name,
    check_node_ip,
    check_ray_node_ip,
    device_resource,
    devices_of,
)
from gpumix.cluster.nodes import (
    ClusterState,
    NodeRequest,
    RayNode,
    cluster_env,
    host_resources,
    ray_start_argv,
    ray_temp_root,
    start_failure,
)
from gpumix.errors import GpumixError


# ---- names -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "gpu-box-1", "rack2.node_3", "x" * 63])
def test_host_names_that_ray_accepts(name):
    assert check_host_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "a b", "a/b", "x" * 64, "höst"])
def test_host_names_that_cannot_label_a_node(name):
    with pytest.raises(GpumixError, match="cannot name a Ray node"):
        check_host_name(name)


def test_device_resources_follow_plan_wide_device_ids():
    assert device_resource("b/gpu0") == "gpumix.io/dev/b/gpu0"
    assert host_resources("a", [0, 1]) == {"gpumix.io/dev/a/cpu0": 1.0, "gpumix.io/dev/a/gpu0": 1.0, "gpumix.io/dev/a/gpu1": 1.0}
    resources = {"CPU": 4.0, "gpumix.io/dev/a/gpu10": 1.0, "gpumix.io/dev/a/gpu2": 1.0, "gpumix.io/dev/a/cpu0": 1.0}
    assert devices_of(resources) == ["a/cpu0", "a/gpu2", "a/gpu10"]
    with pytest.raises(GpumixError, match="names no host"):
        device_resource("gpu0")
    with pytest.raises(GpumixError, match="not gpuN or cpuN"):
        device_resource("a/tpu0")


def test_wildcard_and_rewritten_loopback_addresses_are_refused():
    assert check_node_ip("10.0.0.7") == "10.0.0.7"
    for wildcard in ("0.0.0.0", "::"):
        with pytest.raises(GpumixError, match="every interface"):
            check_node_ip(wildcard)
    with pytest.raises(GpumixError, match="not an IP address"):
        check_node_ip("gpu-box")
    with pytest.raises(GpumixError, match="LAN address"):  # ray start would swap it for the routable address
        check_ray_node_ip("127.0.0.1")
    assert check_ray_node_ip("127.0.0.3") == "127.0.0.3"


# ---- the token -------------------------------------------------------------------------------------------
def test_token_is_created_private_and_reused(tmp_path):
    path = tmp_path / "cfg" / "ray-token"
    assert ensure_token(path) == path
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 bits as hex
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert ensure_token(path).read_text() == token  # reused, not rotated


def test_a_token_others_can_read_is_refused(tmp_path):
    path = tmp_path / "ray-token"
    path.write_text("abc")
    path.chmod(0o644)
    with pytest.raises(GpumixError, match="readable by others") as err:
        check_token_file(path)
    assert "chmod 600" in str(err.value.hint)
    with pytest.raises(GpumixError, match="no cluster token"):
        check_token_file(tmp_path / "missing")


def test_auth_env_uses_the_file_and_drops_a_stray_token():
    token = Path("/x/ray-token")
    env = with_auth({"RAY_AUTH_TOKEN": "stray", "RAY_AUTH_MODE": "disabled", "PATH": "/bin"}, token)
    assert env == {"PATH": "/bin", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/x/ray-token"}
    assert auth_env(None) == {"RAY_AUTH_MODE": "disabled"}


# ---- `ray start` -----------------------------------------------------------------------------------------
def test_head_command_line(tmp_path):
    req = NodeRequest(name="head", node_ip="10.0.0.1", temp_dir=tmp_path, head=True, port=6379)
    argv = ray_start_argv("/venv/bin/ray", req)
    assert argv[:2] == ["/venv/bin/ray", "start"]
    assert _flag(argv, "--node-ip-address") == "10.0.0.1" and _flag(argv, "--port") == "6379"
    assert _flag(argv, "--include-dashboard") == "false" and "--head" in argv and "--disable-usage-stats" in argv
    assert "--block" not in argv and "--address" not in argv


def test_host_command_line_labels_and_resources(tmp_path):
    req = NodeRequest(name="b", node_ip="127.0.0.3", temp_dir=tmp_path, gcs_address="127.0.0.254:6379",
                      labels={HOST_LABEL: "b"}, resources=host_resources("b", [0]), num_cpus=1,
                      object_store_bytes=80 * 2**20, slim=True)  # fmt: skip
    argv = ray_start_argv("ray", req)
    assert _flag(argv, "--address") == "127.0.0.254:6379" and "--head" not in argv
    assert _flag(argv, "--labels") == "gpumix.io/host=b"
    assert json.loads(_flag(argv, "--resources")) == {"gpumix.io/dev/b/cpu0": 1.0, "gpumix.io/dev/b/gpu0": 1.0}
    assert _flag(argv, "--object-store-memory") == str(80 * 2**20)
    assert _flag(argv, "--include-log-monitor") == "false" and _flag(argv, "--num-gpus") == "0"
    assert "--include-dashboard" not in argv  # a head-only flag: `ray start` refuses it on other nodes


def test_cluster_env_turns_token_auth_on_and_tunes_health_checks():
    env = cluster_env({"HOME": "/root", "RAY_AUTH_MODE": "disabled"}, Path("/t"), fast_health=True)
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == "/t"
    assert env["RAY_health_check_period_ms"] == "1000" and env["RAY_health_check_failure_threshold"] == "3"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["RAY_enable_worker_prestart"] == "0"
    assert cluster_env({}, None, fast_health=False)["RAY_AUTH_MODE"] == "disabled"


def test_ray_temp_dir_leaves_room_for_unix_socket_paths(tmp_path):
    deep = tmp_path / ("x" * 150)
    # Ray adds ~60 bytes (session_<date>_<pid>/sockets/plasma_store) under it; a socket path has 107 at most.
    assert len(str(ray_temp_root(deep) / "n249")) + 62 <= 107


def test_start_failure_names_a_refused_token(tmp_path):
    log = tmp_path / "b.log"
    log.write_text("old run: Failed to connect to GCS\n==== gpumix: ray start ...\nray.exceptions.AuthenticationError: "
                   "RPC error: InvalidAuthToken: Authentication token is missing or incorrect.\n")  # fmt: skip
    req = NodeRequest(name="b", node_ip="127.0.0.3", temp_dir=tmp_path, gcs_address="127.0.0.254:1")
    assert "token is missing or wrong" in start_failure(log, req)


def test_local_json_shape():
    node = RayNode(name="b", role="host", host="b", node_ip="127.0.0.3", session=10, started_at=0, pids=[10, 11],
                   temp_dir="/t", log="/l")  # fmt: skip
    head = node.model_copy(update={"name": "head", "role": "head", "host": None, "node_ip": "127.0.0.254", "pids": [5]})
    state = ClusterState(kind="local", address="127.0.0.254:6379", token_file="/t", created_at=0, nodes=[head, node])
    assert state.local_json() == {"address": "127.0.0.254:6379", "head": {"node_ip": "127.0.0.254", "pids": [5]},
                                  "hosts": [{"name": "b", "node_ip": "127.0.0.3", "pids": [10, 11]}]}  # fmt: skip


# ---- the agent -------------------------------------------------------------------------------------------
def test_bind_to_node_rewrites_the_listen_address_only():
    spec = fake_engine_spec("chat", "127.0.0.1")
    spec = spec.model_copy(update={"argv": [*spec.argv, "--rpc", "127.0.0.1:50052"]})
    bound = bind_to_node(spec, "10.0.0.5")
    assert bound.host == "10.0.0.5" and bound.url == f"http://10.0.0.5:{spec.port}"
    assert bound.argv[bound.argv.index("--host") + 1] == "10.0.0.5"
    assert bound.argv[-1] == "127.0.0.1:50052"  # not a listen address: untouched
    with pytest.raises(GpumixError):
        bind_to_node(spec, "0.0.0.0")


def test_wildcard_listen_addresses_are_found():
    spec = fake_engine_spec("chat", "127.0.0.1")
    wild = spec.model_copy(update={"argv": [*spec.argv[:-2], "--host", "0.0.0.0"]})
    assert wildcard_binds(spec) == [] and wildcard_binds(wild) == ["0.0.0.0"]


def test_actor_options_pin_host_and_devices_but_no_gpus(tmp_path):
    spec = agent_spec("demo.chat-1", "b", "127.0.0.1", tmp_path, share=0.5)
    options = actor_options(spec)
    assert options["label_selector"] == {HOST_LABEL: "b"}
    assert options["resources"] == {"gpumix.io/dev/b/cpu0": 0.5}
    assert options["num_gpus"] == 0 and options["num_cpus"] == 0
    assert options["lifetime"] == "detached" and options["name"] == "demo.chat-1" and options["namespace"] == "gpumix"
    bundles, selectors = bundles_of([spec, agent_spec("demo.chat-2", "a", "127.0.0.1", tmp_path)])
    assert bundles == [{"gpumix.io/dev/b/cpu0": 0.5}, {"gpumix.io/dev/a/cpu0": 1.0}]
    assert selectors == [{HOST_LABEL: "b"}, {HOST_LABEL: "a"}]


def test_agent_spec_refuses_devices_of_another_host_and_empty_claims():
    specs = (fake_engine_spec("chat", "127.0.0.1"),)
    with pytest.raises(GpumixError, match="devices of another host"):
        AgentSpec(name="x", host="a", devices=(DeviceClaim("b/gpu0"),), specs=specs, plan=fake_plan(["chat"]), settings=FAST)
    with pytest.raises(GpumixError, match="claims no device"):
        AgentSpec(name="x", host="a", devices=(), specs=specs, plan=fake_plan(["chat"]))
    with pytest.raises(GpumixError, match="share"):
        DeviceClaim("a/gpu0", share=1.5)


# ---- without the extra -----------------------------------------------------------------------------------
# importlib.util.find_spec returns None and `import ray` fails for a name whose sys.modules entry is None.
HIDE_RAY = "import sys\nsys.modules['ray'] = None\n"


@pytest.mark.parametrize("args", [["head"], ["join", "10.0.0.1:6379", "--host", "a"], ["local", "--hosts", "a,b"],
                                  ["status"], ["down"]])  # fmt: skip
def test_every_cluster_command_says_how_to_get_ray(tmp_path, args):
    code = HIDE_RAY + "sys.argv = ['gpumix', 'cluster', *sys.argv[1:]]\nfrom gpumix.cli.main import main\nmain()\n"
    env = dict(os.environ) | {"GPUMIX_CLUSTER_DIR": str(tmp_path / "c"), "GPUMIX_CONFIG_DIR": str(tmp_path / "cfg")}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and "Ray is not installed: the cluster commands need it" in lines[0]
    assert "hint" in lines[1] and "pip install 'gpumix[ray]'" in lines[1]
    assert not (tmp_path / "cfg").exists()  # no token written, nothing started


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]
