"""Every export for the hybrid-box plan, validated by the real tool where this machine has it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gpumix.errors import GpumixError
from gpumix.launch.commands import render_plan
from gpumix.launch.export import FORMATS, render_export, write_export
from gpumix.launch.llamacpp import find_llama_cpp
from gpumix.launch.proxy import render_caddyfile, render_nginx, wrap_nginx_conf
from gpumix.launch.systemd import systemd_quote

LITELLM = Path(os.environ.get("GPUMIX_LITELLM", Path.home() / ".cache/gpumix/litellm-venv/bin/litellm"))


def _need(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
    if path is None:
        pytest.skip(f"{tool} not installed (scripts/install-system-deps.sh installs it)")
    return path


def test_compose_pins_device_ids_and_staggers_gpu_services(hybrid_plan):
    doc = yaml.safe_load(render_export(hybrid_plan, "compose")["compose.yaml"])
    services = doc["services"]
    assert len(services) == 10
    for name, svc in services.items():
        assert svc["restart"] == "unless-stopped"
        assert svc["healthcheck"]["test"][0] == "CMD" and svc["healthcheck"]["test"][-1].startswith("http://127.0.0.1:")
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        for dev in devices:
            assert "count" not in dev and dev["capabilities"] == ["gpu"]
            assert all(isinstance(i, str) for i in dev["device_ids"])
        if name == "cpu-embed":
            assert devices == [] and svc["environment"]["CUDA_VISIBLE_DEVICES"] == ""
    pins = {n: s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for n, s in services.items() if "deploy" in s}
    assert pins["big"] == ["0", "1"] and pins["chat"] == ["0"] and pins["embed"] == ["1"]
    assert "CUDA_VISIBLE_DEVICES" not in services["big"]["environment"]  # containers renumber from 0
    gpu_names = [n for n in services if n != "cpu-embed"]
    for before, after in zip(gpu_names, gpu_names[1:], strict=False):
        assert services[after]["depends_on"] == {before: {"condition": "service_healthy"}}
    # Host model files are mounted read-only and the command points at the mount.
    small = services["small-0"]
    assert small["volumes"][0].endswith(":/models/gemma-3-270m-q4_k_m.gguf:ro")
    assert small["command"][small["command"].index("-m") + 1] == "/models/gemma-3-270m-q4_k_m.gguf"
    assert services["chat"]["entrypoint"] == ["vllm", "serve"]
    assert services["chat"]["command"][0] == "meta-llama/Llama-3.1-8B-Instruct"


def test_caddyfile_is_valid_for_caddy(hybrid_plan, tmp_path):
    caddy = _need("caddy")
    path = tmp_path / "Caddyfile"
    path.write_text(render_export(hybrid_plan, "caddy")["Caddyfile"])
    out = subprocess.run([caddy, "validate", "--config", str(path), "--adapter", "caddyfile"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Valid configuration" in out.stdout + out.stderr


def test_caddy_routes_adapt_to_the_right_upstreams(hybrid_plan, tmp_path):
    caddy = _need("caddy")
    path = tmp_path / "Caddyfile"
    path.write_text(render_export(hybrid_plan, "caddy", base_port=9000)["Caddyfile"])
    out = subprocess.run([caddy, "adapt", "--config", str(path), "--adapter", "caddyfile"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    # embeddings → TEI on 9003; chat → vLLM 9000 with the guard (9005) as fallback; streaming unbuffered.
    assert '"/v1/embeddings*"' in text and '"dial":"127.0.0.1:9003"' in text
    assert '"flush_interval":-1' in text


def test_caddyfile_rejects_a_broken_config_so_the_validation_means_something(tmp_path):
    caddy = _need("caddy")
    path = tmp_path / "Caddyfile"
    path.write_text(":8080 {\n\treverse_proxy 127.0.0.1:1 {\n\t\tno_such_directive 1\n\t}\n}\n")
    out = subprocess.run([caddy, "validate", "--config", str(path), "--adapter", "caddyfile"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0


def test_nginx_config_passes_nginx_t(hybrid_plan, tmp_path):
    nginx = _need("nginx")
    body = render_nginx(hybrid_plan, render_plan(hybrid_plan))
    assert body.count("proxy_buffering off;") == body.count("proxy_pass")
    assert "server 127.0.0.1:8006 backup;" in body  # chat falls back to the guard model
    conf = tmp_path / "nginx.conf"
    conf.write_text(wrap_nginx_conf(body, str(tmp_path)))
    out = subprocess.run([nginx, "-t", "-c", str(conf), "-p", f"{tmp_path}/"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "syntax is ok" in out.stderr
    conf.write_text(wrap_nginx_conf(body.replace("proxy_buffering off;", "proxy_buffering maybe;"), str(tmp_path)))
    bad = subprocess.run([nginx, "-t", "-c", str(conf), "-p", f"{tmp_path}/"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0


def test_routes_send_each_endpoint_to_its_service(hybrid_plan):
    caddyfile = render_caddyfile(hybrid_plan, render_plan(hybrid_plan, base_port=9000))
    blocks = {line.split()[1]: line for line in caddyfile.splitlines() if line.startswith("\thandle /")}
    assert set(blocks) >= {"/v1/chat/completions*", "/v1/embeddings*", "/v1/rerank*", "/v1/audio/transcriptions*",
                           "/v1/images/generations*", "/v1/big/chat/completions*"}  # fmt: skip
    lines = caddyfile.splitlines()
    chat = lines[lines.index("\thandle /v1/chat/completions* {") + 1]
    assert chat.split()[1:3] == ["127.0.0.1:9000", "127.0.0.1:9005"]  # own backend first, then the fallback
    assert lines[lines.index("\thandle /v1/chat/completions* {") + 2].strip() == "lb_policy first"


def test_litellm_config_structure(hybrid_plan):
    doc = yaml.safe_load(render_export(hybrid_plan, "litellm", base_port=9000)["litellm.yaml"])
    names = [m["model_name"] for m in doc["model_list"]]
    assert names.count("small") == 2  # replicas share a model_name, so LiteLLM load-balances them
    ids = [m["model_info"]["id"] for m in doc["model_list"]]
    assert len(set(ids)) == len(ids)
    embed = next(m for m in doc["model_list"] if m["model_name"] == "embed")
    assert embed["litellm_params"]["api_base"] == "http://127.0.0.1:9003/v1"
    assert embed["model_info"]["mode"] == "embedding"
    assert doc["router_settings"]["fallbacks"] == [{"chat": ["guard-chat"]}]


@pytest.mark.skipif(not LITELLM.exists(), reason=f"LiteLLM CLI not installed at {LITELLM} (set $GPUMIX_LITELLM)")
def test_litellm_validates_the_config_with_its_own_loader(hybrid_plan, tmp_path):
    path = tmp_path / "litellm.yaml"
    path.write_text(render_export(hybrid_plan, "litellm")["litellm.yaml"])
    env = os.environ | {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": "sk-test"}
    out = subprocess.run([str(LITELLM), "--config", str(path), "--validate_config"], capture_output=True, text=True,
                         timeout=240, env=env, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "config OK (10 models)" in out.stdout + out.stderr


def test_systemd_units_verify(hybrid_plan, tmp_path):
    analyze = _need("systemd-analyze")
    files = write_export(render_export(hybrid_plan, "systemd"), tmp_path)
    units = [str(p) for p in files if p.suffix == ".service"]
    assert len(units) == 10
    out = subprocess.run([analyze, "verify", "--man=no", *units], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    # The only complaints allowed: engines this machine lacks (vLLM, TEI, whisper.cpp, sd.cpp are not installed here;
    # llama-server neither before `make llama`, when the unit names it without a path).
    problems = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    missing_engine = ("vllm", "text-embeddings-router", "whisper-server", "sd-server")
    if find_llama_cpp() is None:
        missing_engine += ("llama-server",)
    assert all("is not executable" in line and any(e in line for e in missing_engine) for line in problems), problems
    big = (tmp_path / "gpumix-big.service").read_text()
    assert 'Environment="CUDA_VISIBLE_DEVICES=0,1"' in big and "Restart=on-failure" in big
    assert "After=network-online.target gpumix-guard-chat.service" in big


def test_systemd_quote_escapes_specifiers_and_variables():
    assert systemd_quote('a b%c$d"e\\') == '"a b%%c$$d\\"e\\\\"'


def test_export_cli_writes_every_format(hybrid_plan, tmp_path):
    from typer.testing import CliRunner

    from gpumix.cli.main import app

    plan_path = tmp_path / "plan.json"
    plan_path.write_text(hybrid_plan.model_dump_json())
    for fmt in FORMATS:
        result = CliRunner().invoke(app, ["export", fmt, "-p", str(plan_path), "-o", str(tmp_path / fmt)])
        assert result.exit_code == 0, result.output
        assert any((tmp_path / fmt).iterdir())
    script = (tmp_path / "commands" / "gpumix-commands.sh").stat()
    assert script.st_mode & 0o111  # executable
    with pytest.raises(GpumixError, match="unknown export format"):
        render_export(hybrid_plan, "helm")


def test_exports_of_the_planned_hybrid_box_example_validate(tmp_path):
    """The real planner's plan of examples/hybrid-box.yaml, through every exporter and the real validators."""
    planner = pytest.importorskip("gpumix.plan.planner")
    plan = planner.plan_file(Path(__file__).parents[2] / "examples" / "hybrid-box.yaml")
    assert plan.feasible, plan.reasons
    rendered = {fmt: render_export(plan, fmt) for fmt in FORMATS}
    compose = yaml.safe_load(rendered["compose"]["compose.yaml"])["services"]
    assert set(compose) == {svc.name for svc in plan.services}
    for svc in plan.services:
        ids = compose[svc.name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        assert ids == [str(d.index) for d in plan.devices_of(svc)]
    if shutil.which("caddy"):
        path = tmp_path / "Caddyfile"
        path.write_text(rendered["caddy"]["Caddyfile"])
        out = subprocess.run(["caddy", "validate", "--config", str(path), "--adapter", "caddyfile"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx:
        conf = tmp_path / "nginx.conf"
        conf.write_text(wrap_nginx_conf(rendered["nginx"]["gpumix-nginx.conf"], str(tmp_path)))
        out = subprocess.run([nginx, "-t", "-c", str(conf), "-p", f"{tmp_path}/"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr


def test_nginx_weights_replicas_by_their_planned_streams(tmp_path):
    """Replicas sized for 14 and 2 streams: nginx's least_conn counts connections against `weight=`."""
    from gpumix.plan.planner import plan_file

    nginx = _need("nginx")
    plan = plan_file(Path(__file__).resolve().parents[2] / "examples" / "4090-3060-8b-throughput.yaml")
    assert plan.service("chat").replica_concurrency == [14, 2]
    body = render_nginx(plan, render_plan(plan))
    assert "server 127.0.0.1:8001 weight=14 max_fails=3" in body and "server 127.0.0.1:8002 weight=2 max_fails=3" in body
    conf = tmp_path / "nginx.conf"
    conf.write_text(wrap_nginx_conf(body, str(tmp_path)))
    out = subprocess.run([nginx, "-t", "-c", str(conf), "-p", f"{tmp_path}/"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
