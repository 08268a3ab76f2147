"""`up --ray` without Ray: a plan's processes as host-agent parts (hosts, devices, shares, node addresses), a
split over hosts as one group whose `--rpc` names the workers' node addresses, the vLLM multi-node command,
the gateway's backends file, the same-build check, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumix.cluster.deploy import (
    Part,
    RayRun,
    backend_table,
    backend_weights,
    bind_specs,
    check_plan_hosts,
    deployment_name,
    device_share,
    plan_parts,
    ray_env_for,
    read_ray_run,
    write_backends,
    write_ray_run,
)
from gpumix.cluster.driver import alive_hosts, check_hosts, check_same_build
from gpumix.cluster.names import HOST_LABEL
from gpumix.cluster.status import HostReport
from gpumix.errors import GpumixError
from gpumix.gateway.config import read_backends_file
from gpumix.launch.commands import render_plan
from gpumix.plan.planner import plan_file, plan_services
from gpumix.plan.spec import parse_plan_text

FLEET = Path(__file__).parents[2] / "examples" / "cpu-fleet.yaml"
IPS = {"a": "10.0.0.2", "b": "10.0.0.3"}


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.fixture(scope="module")
def fleet():
    return plan_file(FLEET)


def test_fleet_parts_land_on_their_hosts_bound_to_the_node_address(fleet):
    parts = plan_parts(fleet, "demo", IPS, 9001)
    assert [(p.name, p.host, p.devices, p.group) for p in parts] == [
        ("demo.chat-0", "a", ["a/cpu0"], None), ("demo.chat-1", "b", ["b/cpu0"], None), ("demo.embed", "b", ["b/cpu0"], None),
    ]  # fmt: skip
    assert [p.urls for p in parts] == [["http://10.0.0.2:9001"], ["http://10.0.0.3:9002"], ["http://10.0.0.3:9003"]]
    for part in parts:
        (spec,) = part.specs
        assert _flag(spec.argv, "--host") == IPS[part.host] and spec.host == IPS[part.host]
        assert spec.env["CUDA_VISIBLE_DEVICES"] == "" and spec.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert "0.0.0.0" not in spec.argv
    chat, embed = fleet.service("chat"), fleet.service("embed")
    # a part claims its planned memory's share of the device's one resource unit
    assert parts[0].shares == {"a/cpu0": device_share(chat.memory_bytes[0], 4 * 10**9)}
    assert parts[2].shares["b/cpu0"] == pytest.approx(embed.memory_bytes[0] / 4e9, abs=1e-4)
    assert sum(p.shares["b/cpu0"] for p in parts if p.host == "b") < 1.0
    assert parts[2].memory_bytes == {"b/cpu0": embed.memory_bytes[0]}
    assert [c.resource for c in parts[1].claims()] == ["gpumix.io/dev/b/cpu0"]


def test_device_share_rounds_up_to_rays_resolution():
    assert device_share(1, 10**9) == 0.0001  # at least one step
    assert device_share(250_000_000, 10**9) == 0.25
    assert device_share(250_000_001, 10**9) == 0.2501
    assert device_share(5 * 10**9, 10**9) == 1.0 and device_share(5, 0) == 1.0


def test_a_split_over_hosts_is_one_group_whose_rpc_names_the_workers_node_address():
    plan = plan_services(parse_plan_text(
        "devices:\n  - {gpu: RTX 3090, host: a}\n  - {gpu: RTX 3090, host: b}\nservices:\n"
        "  - {name: chat, model: llama-3.3-70b, quant: q4_k_m, context: 4096, engine: llama.cpp, allow_rpc: true}\n"
    ))  # fmt: skip
    main_host = plan.service("chat").devices[0].split("/")[0]
    other = "b" if main_host == "a" else "a"
    main, worker = plan_parts(plan, "d", IPS, 9100)
    assert (main.host, worker.host) == (main_host, other) and main.group == worker.group == "d.chat"
    assert main.devices == [f"{main_host}/gpu0"] and worker.devices == [f"{other}/gpu0"]  # each claims its own host's card
    (server,), (rpc,) = main.specs, worker.specs
    assert rpc.role == "rpc-worker" and _flag(rpc.argv, "-H") == IPS[other] and rpc.health_url == f"tcp://{IPS[other]}:{rpc.port}"
    assert _flag(server.argv, "--rpc") == f"{IPS[other]}:{rpc.port}"  # straight to the worker, no ssh forward
    assert not any("ssh" in n for n in server.notes) and "no authentication" in rpc.notes[0]
    assert main.urls == [server.url] and worker.urls == []
    assert any(w.code.startswith("GPX023") for w in plan.warnings)  # the plan says RPC has no authentication


def test_a_remote_cpu_in_a_split_is_an_rpc_offload_target(fleet):
    """A layer split of the fleet's model over a/cpu0 and b/cpu0: llama-server on a offloads b's layers to RPC0."""
    chat = fleet.service("chat")
    split = chat.model_copy(update={"name": "split", "mode": "layer_split", "devices": ["a/cpu0", "b/cpu0"],
                                    "layers": [9, 9], "replicas": 1, "n_gpu_layers": 9})  # fmt: skip
    main, worker = render_plan(fleet.model_copy(update={"services": [split]}))
    assert _flag(main.argv, "-dev") == "RPC0" and _flag(main.argv, "-ngl") == "9" and _flag(main.argv, "-sm") == "none"
    assert worker.host_name == "b" and worker.argv[0].endswith("ggml-rpc-server") and _flag(worker.argv, "-t") == "1"


def test_vllm_pipeline_parallel_over_hosts_joins_the_cluster():
    plan = plan_services(parse_plan_text(
        "devices:\n  - {gpu: RTX 4090, host: a, uuid: GPU-aaa}\n  - {gpu: RTX 4090, host: b, uuid: GPU-bbb}\nservices:\n"
        "  - {name: chat, model: qwen2.5-32b, quant: fp8, engine: vllm, context: 4096, allow_multinode: true}\n"
    ))  # fmt: skip
    env = ray_env_for("10.0.0.1:6379", "/home/u/.config/gpumix/ray-token")
    (part,) = plan_parts(plan, "d", IPS, 9200, env)
    (spec,) = part.specs
    assert _flag(spec.argv, "--distributed-executor-backend") == "ray" and _flag(spec.argv, "--pipeline-parallel-size") == "2"
    assert _flag(spec.argv, "--host") == IPS[part.host] and spec.env["VLLM_HOST_IP"] == IPS[part.host]
    assert spec.env["RAY_ADDRESS"] == "10.0.0.1:6379" and spec.env["RAY_AUTH_MODE"] == "token"
    assert spec.env["RAY_AUTH_TOKEN_PATH"] == "/home/u/.config/gpumix/ray-token"
    assert "VLLM_PP_LAYER_PARTITION" in spec.env and part.devices == [f"{part.host}/gpu0"]
    assert "Ray cluster" in spec.notes[0]


def test_backends_file_round_trips_through_the_gateways_reader(tmp_path, fleet):
    parts = plan_parts(fleet, "demo", IPS, 9001)
    table = backend_table(["chat", "embed"], parts, {"demo.chat-0", "demo.embed"})
    assert table == {"chat": ["http://10.0.0.2:9001"], "embed": ["http://10.0.0.3:9003"]}
    weights = backend_weights(["chat", "embed"], parts, {"demo.chat-0", "demo.embed"})
    # each URL weighs the streams its engine takes (llama-server's -np), which the gateway balances by
    assert weights == {"chat": [float(_flag(parts[0].specs[0].argv, "-np"))], "embed": [1.0]}
    path = tmp_path / "backends.json"
    write_backends(path, table, dead=["http://10.0.0.3:9002"], weights=weights)
    read = read_backends_file(path)
    assert read.services == table and read.dead == {"http://10.0.0.3:9002"} and read.weights == weights
    assert read.weights_of("chat") == tuple(weights["chat"])
    path.write_text(json.dumps({"services": {"chat": ["http://a:1"]}, "weights": {"chat": [-1]}}))
    with pytest.raises(GpumixError, match="weights"):
        read_backends_file(path)
    path.write_text(json.dumps({"services": {"chat": ["ftp://x"]}}))
    with pytest.raises(GpumixError, match="not an http"):
        read_backends_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(GpumixError, match="expected"):
        read_backends_file(path)


def test_ray_run_state_round_trips(tmp_path, fleet):
    run = RayRun(deployment="demo", address="10.0.0.1:6379", front_port=8080, next_port=9004,
                 parts=plan_parts(fleet, "demo", IPS, 9001))  # fmt: skip
    write_ray_run(tmp_path, run)
    again = read_ray_run(tmp_path)
    assert again == run and again.part("demo.embed").host == "b"
    assert isinstance(again.parts[0], Part) and again.groups() == {}


def test_every_plan_host_must_be_in_the_cluster_with_its_devices(fleet):
    hosts = [HostReport(name="head", node_ip="10.0.0.1", node_id="h", alive=True, is_head=True, devices=[]),
             HostReport(name="a", node_ip="10.0.0.2", node_id="1", alive=True, is_head=False, devices=["a/cpu0"]),
             HostReport(name="b", node_ip="10.0.0.3", node_id="2", alive=False, is_head=False, devices=["b/cpu0"])]  # fmt: skip
    alive = alive_hosts(hosts)
    assert set(alive) == {"a"}
    with pytest.raises(GpumixError, match=r"host b of the plan is not in the cluster") as err:
        check_hosts(fleet, alive, "10.0.0.1:6379")
    assert "gpumix cluster join 10.0.0.1:6379 --host b" in (err.value.hint or "")
    hosts[2] = HostReport(name="b", node_ip="10.0.0.3", node_id="3", alive=True, is_head=False, devices=["b/gpu0"])
    with pytest.raises(GpumixError, match=r"host b \(10.0.0.3\) does not offer b/cpu0"):
        check_hosts(fleet, alive_hosts(hosts), "10.0.0.1:6379")
    hosts[2] = HostReport(name="b", node_ip="10.0.0.3", node_id="3", alive=True, is_head=False, devices=["b/cpu0"])
    assert check_hosts(fleet, alive_hosts(hosts), "x") == IPS
    assert HOST_LABEL == "gpumix.io/host"


def test_a_plan_without_hosts_or_a_missing_host_is_one_line_errors(fleet):
    hostless = plan_services(parse_plan_text("devices:\n  - {cpu: {ram_gb: 4, threads: 1}}\nservices:\n  - {name: s, model: gemma-3-270m}\n"))
    with pytest.raises(GpumixError, match="name no host"):
        check_plan_hosts(hostless)
    with pytest.raises(GpumixError, match="host b of the plan is not in the cluster"):
        bind_specs(render_plan(fleet), {"a": "10.0.0.2"})
    assert deployment_name("run") == "run" and deployment_name("my run/1") == "my-run-1"
    with pytest.raises(GpumixError, match="cannot name a deployment"):
        deployment_name("///")


def test_an_rpc_split_needs_the_same_llama_build_on_every_host():
    check_same_build("d.chat", {"a": "8196 (0c1e570)", "b": "8196 (0c1e570)"})
    with pytest.raises(GpumixError, match=r"different llama.cpp builds \(a: 8196 \(0c1e570\); b: 8100 \(abc\)\)"):
        check_same_build("d.chat", {"a": "8196 (0c1e570)", "b": "8100 (abc)"})
    with pytest.raises(GpumixError, match="not installed on host b"):
        check_same_build("d.chat", {"a": "8196 (0c1e570)", "b": None})
