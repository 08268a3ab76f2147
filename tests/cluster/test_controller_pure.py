"""The `up --ray` controller's decisions without Ray (agents stand in as plain objects, stopping them is
recorded): a dead host leaves the backends file at once with its URLs listed dead; a stand-in serves, then
drains and stops when its plan part is healthy again; with --no-return the plan part is given up instead."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import gpumix.cluster.controller as controller_module
from gpumix.cluster.controller import Controller
from gpumix.cluster.deploy import RayRun, parts_of_process, plan_parts
from gpumix.cluster.deployment import Deployment, RayUpOptions
from gpumix.cluster.status import HostReport
from gpumix.launch.commands import render_plan
from gpumix.plan.planner import plan_file

FLEET = Path(__file__).parents[2] / "examples" / "cpu-fleet.yaml"
IPS = {"a": "127.0.0.2", "b": "127.0.0.3"}
A = HostReport(name="a", node_ip=IPS["a"], node_id="na", alive=True, is_head=False, devices=["a/cpu0"])
B = HostReport(name="b", node_ip=IPS["b"], node_id="nb", alive=True, is_head=False, devices=["b/cpu0"])


@pytest.fixture
def controller(tmp_path, monkeypatch):
    plan = plan_file(FLEET)
    parts = plan_parts(plan, "demo", IPS, 9001)
    run = RayRun(deployment="demo", address="127.0.0.254:1", front_port=8080, next_port=9004, parts=parts,
                 node_ips=IPS)  # fmt: skip
    said: list[str] = []
    options = RayUpOptions(run_dir=tmp_path, drain_s=0.0)
    d = Deployment(ray=SimpleNamespace(), run=run, plan=plan, options=options, run_dir=tmp_path, say=said.append)
    d.handles = {p.name: f"handle:{p.name}" for p in parts}
    d.serving = {p.name for p in parts}
    d.write_backends()
    stopped: list[str] = []
    monkeypatch.setattr(controller_module, "stop_agents", lambda _ray, handles, timeout_s=30.0: stopped.extend(handles))
    return SimpleNamespace(c=Controller(d, None), d=d, stopped=stopped, said=said, plan=plan)


def _backends(d: Deployment) -> dict:
    return json.loads(d.backends_path.read_text())


def _stand_in(t: SimpleNamespace, host: str = "a") -> str:
    """A stand-in for embed on `host`, as the re-plan would start it."""
    plan = t.plan
    embed = plan.service("embed").model_copy(update={"devices": [f"{host}/cpu0"], "host": host})
    moved_plan = plan.model_copy(update={"services": [embed]})
    specs = render_plan(moved_plan, base_port=9010)
    (part,) = parts_of_process(moved_plan, "demo", specs, IPS, origin="moved", suffix=".moved1", replaces=["demo.embed"])
    t.d.run.parts.append(part)
    t.d.handles[part.name] = f"handle:{part.name}"
    return part.name


def test_a_dead_host_leaves_the_gateway_at_once_and_its_urls_are_listed_dead(controller):
    t = controller
    t.c._hosts({"a": A})
    assert t.d.run.dead_hosts == ["b"]
    table = _backends(t.d)
    assert table["services"] == {"chat": ["http://127.0.0.2:9001"], "embed": []}
    assert table["dead"] == ["http://127.0.0.3:9002", "http://127.0.0.3:9003"]
    assert [e.kind for e in t.d.run.events] == ["host-dead"] and "chat-1, embed" in t.d.run.events[0].message
    t.c._hosts({"a": A, "b": B})  # b is back: no URL is dead any more; its parts return once healthy
    assert t.d.run.dead_hosts == [] and _backends(t.d)["dead"] == []
    assert [e.kind for e in t.d.run.events] == ["host-dead", "host-back"]


def test_a_stand_in_serves_then_drains_when_its_plan_part_is_healthy_again(controller):
    t = controller
    t.c._hosts({"a": A})
    name = _stand_in(t)
    t.d.pending[name] = time.monotonic() + 60
    t.c._pending(healthy={name}, reports={})
    assert name in t.d.serving and _backends(t.d)["services"]["embed"] == ["http://127.0.0.2:9010"]
    t.c._hosts({"a": A, "b": B})
    t.c._returns(healthy={"demo.embed", name}, alive={"a": A, "b": B})
    assert "demo.embed" in t.d.serving and name not in t.d.serving and name in t.d.draining
    assert _backends(t.d)["services"]["embed"] == ["http://127.0.0.3:9003"]  # back on b before the stand-in stops
    t.c._drain()
    assert t.stopped == [f"handle:{name}"] and name not in {p.name for p in t.d.run.parts}
    assert "returned" in [e.kind for e in t.d.run.events]


def test_no_return_gives_up_the_plan_part_once_the_stand_in_serves(controller):
    t = controller
    t.d.run.no_return = True
    t.c._hosts({"a": A})
    name = _stand_in(t)
    t.d.pending[name] = time.monotonic() + 60
    t.c._pending(healthy={name}, reports={})
    assert t.stopped == ["handle:demo.embed"] and t.d.run.part("demo.embed").dropped
    t.c._returns(healthy={name}, alive={"a": A, "b": B})
    assert name in t.d.serving and not t.d.draining  # the stand-in stays


def test_a_stand_in_that_never_gets_healthy_is_stopped_and_reported(controller):
    t = controller
    t.c._hosts({"a": A})
    name = _stand_in(t)
    t.d.pending[name] = time.monotonic() + 60
    report = {"healthy": False, "processes": [{"state": "backoff", "last_exit_code": 1, "healthy_at": None}]}
    t.c._pending(healthy=set(), reports={name: report})
    assert t.stopped == [f"handle:{name}"] and name not in {p.name for p in t.d.run.parts}
    assert t.d.run.events[-1].kind == "failed"


def test_a_lost_replica_is_re_planned_for_its_streams_and_weighs_them_in_the_gateway(tmp_path, monkeypatch):
    """Three hosts, chat's two replicas on a and b: b dies; the re-plan puts a stand-in for chat-1 on c (a already
    serves a copy), named and sized as chat-1 (its -np = the streams chat-1 took), and the backends file gives
    each chat URL its streams as weight."""
    spec_file = tmp_path / "three.yaml"
    spec_file.write_text(
        "devices:\n" + "".join(f"  - {{cpu: {{ram_gb: 4, threads: 1}}, host: {h}}}\n" for h in "abc")
        + "services:\n  - {name: chat, model: gemma-3-270m, replicas: 2, mode: replica, concurrency: 4,"
        " context: 1024, devices: [a/cpu0, b/cpu0]}\n"
    )
    plan = plan_file(spec_file)
    ips = {"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"}
    parts = plan_parts(plan, "demo", ips, 9001)
    run = RayRun(deployment="demo", address="127.0.0.254:1", front_port=8080, next_port=9004, parts=parts,
                 node_ips=ips, spec_file=str(spec_file))  # fmt: skip
    d = Deployment(ray=SimpleNamespace(), run=run, plan=plan, options=RayUpOptions(run_dir=tmp_path, spec_file=spec_file),
                   run_dir=tmp_path, say=print)  # fmt: skip
    d.serving = {p.name for p in parts}
    started: list[str] = []
    monkeypatch.setattr(d, "_start_parts", lambda new: started.extend(p.name for p in new))
    c = Controller(d, spec_file)
    lost = [p for p in parts if p.host == "b"]
    d.run.dead_hosts = ["b"]
    c_host = HostReport(name="c", node_ip=ips["c"], node_id="nc", alive=True, is_head=False, devices=["c/cpu0"])
    c.replan(lost, {"a": A, "c": c_host})
    (stand_in,) = [p for p in d.run.parts if p.origin == "moved"]
    assert started == [stand_in.name] == ["demo.chat-1.moved1"]
    assert stand_in.host == "c" and stand_in.devices == ["c/cpu0"] and stand_in.replaces == ["demo.chat-1"]
    chat_1 = d.run.part("demo.chat-1")
    (spec,) = stand_in.specs
    assert stand_in.streams == chat_1.streams == int(spec.argv[spec.argv.index("-np") + 1]) == 2  # of 4
    d.serving = {"demo.chat-0", stand_in.name}
    d.write_backends()
    table = json.loads(d.backends_path.read_text())
    assert table["services"]["chat"] == [*d.run.part("demo.chat-0").urls, *stand_in.urls]
    assert table["weights"]["chat"] == [float(d.run.part("demo.chat-0").streams), float(stand_in.streams)]
