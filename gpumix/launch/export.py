"""`gpumix export FORMAT`: write one launch artifact for a plan into a directory.

A plan over several hosts gets one file set per host, in a folder named after the host (`box-a/compose.yaml`):
each holds the processes that host runs (its engines, and the RPC workers of splits across hosts) and, for the
front proxies, the routes to them."""

from __future__ import annotations

from pathlib import Path

from gpumix.errors import GpumixError
from gpumix.launch.commands import DEFAULT_BASE_PORT, render_plan, specs_for_host
from gpumix.launch.compose import render_compose
from gpumix.launch.litellm_config import render_litellm
from gpumix.launch.proxy import render_caddyfile, render_nginx
from gpumix.launch.script import render_script
from gpumix.launch.spec import LaunchSpec
from gpumix.launch.systemd import render_units
from gpumix.plan.result import Plan

FORMATS = ("compose", "caddy", "nginx", "litellm", "systemd", "commands")


def render_export(
    plan: Plan, fmt: str, base_port: int = DEFAULT_BASE_PORT, front_port: int = 8080, stagger_s: float = 10.0
) -> dict[str, str]:
    """File name → content for one format. Backend ports are base_port, base_port+1, ... in plan order."""
    if fmt not in FORMATS:
        raise GpumixError(f"unknown export format '{fmt}'", hint=f"use one of: {', '.join(FORMATS)}")
    specs = render_plan(plan, base_port=base_port)
    hosts = list(dict.fromkeys(spec.host_name for spec in specs))
    if len(hosts) <= 1:
        return _render(plan, fmt, specs, front_port, stagger_s)
    files: dict[str, str] = {}
    for host in hosts:
        for name, content in _render(plan, fmt, specs_for_host(specs, host), front_port, stagger_s).items():
            files[f"{host_folder(host)}/{name}"] = _mark_host(name, content, host)
    return files


def host_folder(host: str | None) -> str:
    return host or "no-host"  # host names never contain '/' (plan-file pattern); None is a device without host:


def _mark_host(name: str, content: str, host: str | None) -> str:
    """A comment naming the host the file is for (after the shebang of a script)."""
    line = f"# for host {host or '(devices without a host)'}: run these processes there\n"
    if content.startswith("#!"):
        first, _, rest = content.partition("\n")
        return f"{first}\n{line}{rest}"
    return line + content


def _render(plan: Plan, fmt: str, specs: list[LaunchSpec], front_port: int, stagger_s: float) -> dict[str, str]:
    if fmt == "compose":
        return {"compose.yaml": render_compose(specs, stagger_s)}
    if fmt == "caddy":
        return {"Caddyfile": render_caddyfile(plan, specs, front_port)}
    if fmt == "nginx":
        return {"gpumix-nginx.conf": render_nginx(plan, specs, front_port)}
    if fmt == "litellm":
        return {"litellm.yaml": render_litellm(plan, specs)}
    if fmt == "systemd":
        return render_units(specs)
    return {"gpumix-commands.sh": render_script(specs, stagger_s)}


def write_export(files: dict[str, str], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in files.items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        if name.endswith(".sh"):
            path.chmod(0o755)
        written.append(path)
    return written
