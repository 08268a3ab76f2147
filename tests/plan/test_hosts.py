"""One device identity across hosts: plan-wide device ids, services and replicas on any host, splits across hosts
only where the plan file says how, and launch commands that name each host's own card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpumix.errors import GpumixError
from gpumix.hardware.spec import DeviceRef
from gpumix.launch.commands import render_plan, specs_for_host
from gpumix.launch.export import render_export
from gpumix.plan.planner import plan_services
from gpumix.plan.result import Plan, read_plan_json
from gpumix.plan.spec import parse_plan_text

TWO_HOSTS = "devices:\n  - {gpu: RTX 4090, host: a, uuid: GPU-aaa}\n  - {gpu: RTX 4090, host: b, uuid: GPU-bbb}\n"
TWO_3090_HOSTS = "devices:\n  - {gpu: RTX 3090, host: a}\n  - {gpu: RTX 3090, host: b}\n"


def _plan(text: str) -> Plan:
    plan = plan_services(parse_plan_text(text))
    assert Plan.model_validate_json(plan.model_dump_json()) == plan  # the artifact round-trips
    return plan


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_device_ids_name_host_and_index():
    assert DeviceRef(host=None, index=0).id == "gpu0" and DeviceRef(host=None, index=-2).id == "cpu1"
    assert DeviceRef(host="box-a", index=3).id == "box-a/gpu3"
    assert DeviceRef.parse("box-a/cpu0") == DeviceRef(host="box-a", index=-1)
    assert DeviceRef.parse("gpu12") == DeviceRef(host=None, index=12)
    for bad in ("gpu", "a/b/gpu0", "tpu0", "/gpu0", "a b/gpu0"):
        with pytest.raises(GpumixError, match="is not a device id"):
            DeviceRef.parse(bad)


def test_two_hosts_with_one_4090_each_run_two_replicas():
    plan = _plan(TWO_HOSTS + "services:\n  - {name: chat, model: llama-3.1-8b, quant: q4_k_m, replicas: 2}\n")
    chat = plan.service("chat")
    assert plan.feasible and chat.mode == "replica" and chat.replicas == 2
    assert chat.devices == ["a/gpu0", "b/gpu0"] and chat.host is None  # one replica per host
    assert [d.host for d in plan.devices_of(chat)] == ["a", "b"]
    assert plan.hosts() == ["a", "b"] and plan.device("b/gpu0").uuid == "GPU-bbb"


def test_each_hosts_command_names_its_own_card():
    """Both hosts have a card with CUDA index 0, with different UUIDs: each host's process pins its own."""
    plan = _plan(TWO_HOSTS + "services:\n  - {name: chat, model: llama-3.1-8b, quant: q4_k_m, replicas: 2}\n")
    specs = render_plan(plan, base_port=9100)
    by_host = {spec.host_name: spec for spec in specs}
    assert set(by_host) == {"a", "b"}
    assert by_host["a"].env["CUDA_VISIBLE_DEVICES"] == "GPU-aaa" and by_host["a"].devices == ["a/gpu0"]
    assert by_host["b"].env["CUDA_VISIBLE_DEVICES"] == "GPU-bbb" and by_host["b"].devices == ["b/gpu0"]
    assert all(_flag(s.argv, "--host") == "127.0.0.1" for s in specs)  # bind address stays loopback
    without_uuids = plan.model_copy(update={"devices": [d.model_copy(update={"uuid": None}) for d in plan.devices]})
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in render_plan(without_uuids)] == ["0", "0"]
    files = render_export(plan, "commands")
    assert set(files) == {"a/gpumix-commands.sh", "b/gpumix-commands.sh"}
    assert "GPU-aaa" in files["a/gpumix-commands.sh"] and "GPU-bbb" not in files["a/gpumix-commands.sh"]
    assert "GPU-bbb" in files["b/gpumix-commands.sh"] and files["b/gpumix-commands.sh"].startswith("#!/usr/bin/env bash\n# for host b")
    compose = render_export(plan, "compose")
    assert set(compose) == {"a/compose.yaml", "b/compose.yaml"} and "GPU-bbb" in compose["b/compose.yaml"]
    units = render_export(plan, "systemd")
    assert "b/gpumix-chat-1.service" in units and "GPU-aaa" in units["a/gpumix-chat-0.service"]


def test_services_of_every_kind_go_to_any_host():
    plan = _plan("devices:\n  - {gpu: RTX 3060 12GB, host: small}\n  - {gpu: RTX 4090, host: big}\nservices:\n"
                 "  - {name: chat, model: qwen2.5-14b, quant: q4_k_m, context: 8192}\n"
                 "  - {name: embed, model: bge-m3}\n  - {name: images, model: sdxl}\n")  # fmt: skip
    assert plan.feasible
    assert plan.service("chat").devices == ["big/gpu0"] and plan.service("chat").host == "big"
    assert {plan.service(n).host for n in ("embed", "images")} <= {"small", "big"}


def test_a_split_across_hosts_needs_allow_rpc_and_the_reason_says_so():
    service = "  - {name: chat, model: llama-3.3-70b, quant: q4_k_m, context: 4096, engine: llama.cpp%s}\n"
    refused = _plan(TWO_3090_HOSTS + "services:\n" + service % "")
    assert not refused.feasible
    (reason,) = refused.reasons
    assert "does not fit on any one host" in reason and "`allow_rpc: true`" in reason and "a/gpu0 + b/gpu0" in reason
    allowed = _plan(TWO_3090_HOSTS + "services:\n" + service % ", allow_rpc: true")
    chat = allowed.service("chat")
    assert allowed.feasible and chat.mode == "layer_split" and chat.host is None
    assert sorted(chat.devices) == ["a/gpu0", "b/gpu0"] and any(w.code.startswith("GPX009") for w in allowed.warnings)
    main, worker = render_plan(allowed, base_port=9200)
    first_host = chat.devices[0].split("/")[0]
    assert main.role == "server" and main.host_name == first_host and main.devices == chat.devices
    assert worker.role == "rpc-worker" and worker.name == "chat-rpc0" and worker.host_name != first_host
    assert worker.argv[0].endswith("ggml-rpc-server") and _flag(worker.argv, "-H") == "127.0.0.1"
    assert _flag(worker.argv, "-p") == str(worker.port) and worker.health_url == f"tcp://127.0.0.1:{worker.port}"
    assert _flag(main.argv, "--rpc") == f"127.0.0.1:{worker.port}" and _flag(main.argv, "-dev") == "CUDA0,RPC0"
    assert main.env["CUDA_VISIBLE_DEVICES"] == "0" and worker.env["CUDA_VISIBLE_DEVICES"] == "0"
    assert any("ssh -N -L" in note for note in main.notes)
    assert specs_for_host([main, worker], worker.host_name) == [worker]
    compose = render_export(allowed, "compose")
    worker_compose = yaml.safe_load(compose[f"{worker.host_name}/compose.yaml"])["services"]
    assert list(worker_compose) == ["chat-rpc0"] and "/dev/tcp/127.0.0.1/" in worker_compose["chat-rpc0"]["healthcheck"]["test"][-1]
    caddy = render_export(allowed, "caddy", base_port=9200)
    assert f"127.0.0.1:{main.port}" in caddy[f"{first_host}/Caddyfile"]
    assert "reverse_proxy" not in caddy[f"{worker.host_name}/Caddyfile"]  # an RPC worker serves no endpoint


def test_vllm_pipeline_parallel_across_hosts_needs_allow_multinode():
    service = "  - {name: chat, model: qwen2.5-32b, quant: fp8, engine: vllm, context: 4096%s}\n"
    refused = _plan(TWO_HOSTS + "services:\n" + service % "")
    assert not refused.feasible and "`allow_multinode: true`" in refused.reasons[0]
    allowed = _plan(TWO_HOSTS + "services:\n" + service % ", allow_multinode: true")
    chat = allowed.service("chat")
    assert allowed.feasible and chat.mode == "pipeline_parallel" and {d.split("/")[0] for d in chat.devices} == {"a", "b"}
    (spec,) = render_plan(allowed)
    assert _flag(spec.argv, "--pipeline-parallel-size") == "2" and _flag(spec.argv, "--distributed-executor-backend") == "ray"
    assert spec.env["CUDA_VISIBLE_DEVICES"] in ("GPU-aaa", "GPU-bbb") and "Ray cluster" in spec.notes[0]


def test_pinning_by_device_id_and_host_names_are_checked():
    plan = _plan(TWO_HOSTS + "services:\n  - {name: chat, model: llama-3.1-8b, quant: q4_k_m, devices: [b/gpu0]}\n")
    assert plan.service("chat").devices == ["b/gpu0"]
    with pytest.raises(GpumixError, match=r"services\[0\]\.devices.*'b/tpu0' is not a device index or id"):
        parse_plan_text(TWO_HOSTS + "services:\n  - {name: chat, model: llama-3.1-8b, devices: [b/tpu0]}\n")
    with pytest.raises(GpumixError, match=r"devices\[0\]\.host: String should match pattern"):
        parse_plan_text("devices:\n  - {gpu: RTX 4090, host: 'a/b'}\nservices:\n  - {name: s, model: gemma-3-1b}\n")


def _gpumix(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpumix", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_a_format_1_plan_json_is_a_one_line_error_for_every_reader(tmp_path):
    old = json.loads(_plan(TWO_HOSTS + "services:\n  - {name: chat, model: llama-3.1-8b, quant: q4_k_m}\n").model_dump_json())
    old["format_version"] = 1
    old["services"][0]["devices"] = [0]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(old))
    with pytest.raises(GpumixError, match=r"written by an older gpumix \(plan format 1; this gpumix reads format 2\)"):
        read_plan_json(path)
    for args in (["up", str(path), "--run-dir", str(tmp_path / "run")], ["export", "commands", "-p", str(path)],
                 ["gateway", "--plan", str(path), "--port", "1"]):  # fmt: skip
        run = _gpumix(*args)
        assert run.returncode == 2 and "Traceback" not in run.stderr, (args, run.stderr)
        first = run.stderr.replace("\n", " ")  # the terminal may wrap; the message is one line of text
        assert "written by an older gpumix" in first and "re-run `gpumix plan" in first


def test_up_on_a_multi_host_plan_needs_host(tmp_path):
    plan = _plan(TWO_HOSTS + "services:\n  - {name: chat, model: llama-3.1-8b, quant: q4_k_m, replicas: 2}\n")
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json())
    run = _gpumix("up", str(path), "--run-dir", str(tmp_path / "run"))
    assert run.returncode == 2 and "several hosts (a, b)" in run.stderr and "--host" in run.stderr
    wrong = _gpumix("up", str(path), "--run-dir", str(tmp_path / "run"), "--host", "c")
    assert wrong.returncode == 2 and "--host c" in wrong.stderr and "(its hosts: a, b)" in wrong.stderr.replace("\n", " ")
    # --host a gets past the host choice to the pre-flight of a's processes (this machine has no RTX 4090)
    mine = _gpumix("up", str(path), "--run-dir", str(tmp_path / "run"), "--host", "a")
    assert mine.returncode == 2 and "a/gpu0" in mine.stderr and "b/gpu0" not in mine.stderr
    assert not (tmp_path / "run" / "state.json").exists()


def test_a_service_pinned_to_an_unknown_host_is_an_error_naming_the_line():
    from gpumix.plan.spec import parse_plan_text_with_lines

    text = TWO_HOSTS + "services:\n  - name: chat\n    model: llama-3.1-8b\n    host: c\n"
    spec, lines = parse_plan_text_with_lines(text, "fleet.yaml")
    with pytest.raises(GpumixError, match=r"^fleet.yaml:7: services\[0\]\.host: no device is on host 'c'") as err:
        plan_services(spec, source="fleet.yaml", lines=lines)
    assert err.value.hint == "hosts: a, b"
