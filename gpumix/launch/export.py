"""`gpumix export FORMAT`: write one launch artifact for a plan into a directory."""

from __future__ import annotations

from pathlib import Path

from gpumix.errors import GpumixError
from gpumix.launch.commands import DEFAULT_BASE_PORT, render_plan
from gpumix.launch.compose import render_compose
from gpumix.launch.litellm_config import render_litellm
from gpumix.launch.proxy import render_caddyfile, render_nginx
from gpumix.launch.script import render_script
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
        path.write_text(content)
        if name.endswith(".sh"):
            path.chmod(0o755)
        written.append(path)
    return written
