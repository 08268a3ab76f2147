"""systemd export: one unit per engine process (pinned environment, restart policy) and a target to start them."""

from __future__ import annotations

from gpumix.launch.spec import LaunchSpec

TARGET = "gpumix.target"


def unit_name(spec: LaunchSpec) -> str:
    return f"gpumix-{spec.name}.service"


def systemd_quote(arg: str) -> str:
    """Quote one ExecStart/Environment word (systemd.service "Command lines"; systemd.unit specifiers).

    Double quotes with C-style escapes; `%` is a specifier and `$` a variable, so both are doubled."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def render_unit(spec: LaunchSpec, after: str | None) -> str:
    lines = [
        "[Unit]",
        f"Description=gpumix {spec.engine} service {spec.name} (port {spec.port})",
        "After=network-online.target" + (f" {after}" if after else ""),
        "Wants=network-online.target",
        f"PartOf={TARGET}",
        "",
        "[Service]",
        "Type=exec",
        *(f"Environment={systemd_quote(f'{key}={value}')}" for key, value in sorted(spec.env.items())),
        "ExecStart=" + " ".join(systemd_quote(arg) for arg in spec.argv),
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStartSec=600",
        "TimeoutStopSec=30",
        "KillMode=control-group",
        "",
        "[Install]",
        f"WantedBy={TARGET}",
    ]
    if spec.cwd:
        lines.insert(lines.index("Type=exec") + 1, f"WorkingDirectory={spec.cwd}")
    lines[:0] = [f"# {note}" for note in spec.notes]
    return "\n".join(lines) + "\n"


def render_target(specs: list[LaunchSpec]) -> str:
    units = " ".join(unit_name(spec) for spec in specs)
    return (
        "[Unit]\n"
        "Description=gpumix services (generated)\n"
        f"Wants={units}\n"
        "\n[Install]\nWantedBy=multi-user.target\n"
    )


def render_units(specs: list[LaunchSpec]) -> dict[str, str]:
    """File name → content. GPU units are ordered one after another (After=) so cards start in turn."""
    files: dict[str, str] = {}
    previous_gpu: str | None = None
    for spec in specs:
        files[unit_name(spec)] = render_unit(spec, previous_gpu if spec.uses_gpu else None)
        if spec.uses_gpu:
            previous_gpu = unit_name(spec)
    files[TARGET] = render_target(specs)
    return files
