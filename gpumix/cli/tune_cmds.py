"""`gpumix tune` and `gpumix testbed up|down|status` (logic in gpumix.tune)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from gpumix.cli.output import add_row, esc, say, show, stdout_console
from gpumix.cli.params import objective as parse_objective

testbed_app = typer.Typer(help="A heterogeneous test bed: ggml-rpc-server devices of different CPU speed.")


def _split_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").replace("/", ",").split(",") if v.strip()]


def tune_cmd(
    model: str = typer.Option(
        ..., "--model", "-m", help="GGUF path, or a catalog id (e.g. llama-3.1-8b): synthesised once with random "
        "weights and cached, since speed depends on shapes, not values."
    ),
    quant: str = typer.Option("q4_k_m", "--quant", "-q", help="Weight format when --model is a catalog id."),
    devices: str = typer.Option(None, "--devices", help="llama.cpp devices, e.g. CUDA0,CUDA1 or RPC0,RPC1."),
    rpc: str = typer.Option(None, "--rpc", help="ggml-rpc-server list host:port,... (`gpumix testbed up` prints it)."),
    ctx: int = typer.Option(4096, "--ctx", help="Context per sequence the split must leave room for."),
    objective: str = typer.Option("latency", "--objective", help="latency (one stream) | throughput (parallel)."),
    parallel: int = typer.Option(4, "--parallel", help="Sequences for --objective throughput."),
    budget: int = typer.Option(4, "--budget", help="Most llama-bench runs to spend."),
    n_gen: int = typer.Option(64, "--n-gen", help="Tokens generated per llama-bench run (-n)."),
    repetitions: int = typer.Option(2, "--repetitions", "-r", help="llama-bench -r."),
    prefill_tokens: int = typer.Option(
        64, "--prefill-tokens", help="Prompt tokens (-p) measured with each device-alone run, for the calibration's "
        "prefill TFLOP/s; 0 skips it."
    ),  # fmt: skip
    plot: Path = typer.Option(None, "--plot", help="Write the predicted curve and measured points to FILE.png."),
    host_offload: bool = typer.Option(
        False, "--cpu-offload", help="Also consider keeping the first layers on the host CPU (-ngl sweep: GPU + CPU)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    calibration_out: Path = typer.Option(
        None, "--calibration-out", help="Calibration file to write (default $GPUMIX_CALIBRATION or "
        "~/.config/gpumix/calibration.json)."
    ),  # fmt: skip
    no_calibration: bool = typer.Option(False, "--no-calibration", help="Do not write a calibration file."),
) -> None:
    """Measure splits on the real devices (each alone, then the ones the fitted model points to) and write
    this machine's calibration."""
    from gpumix.calibrate.files import save_machine_calibration
    from gpumix.cli.calibration_option import cli_calibration_out
    from gpumix.tune.session import BenchSettings, tune_machine
    from gpumix.tune.tuner import TunePoint

    goal = parse_objective(objective)
    rpc_list = _split_list(rpc)
    settings = BenchSettings(n_gen=n_gen, n_prompt_alone=prefill_tokens, repetitions=repetitions)
    console = stdout_console()  # one console: progress lines print above its spinner

    def on_point(point: TunePoint, n: int) -> None:
        if as_json:
            return
        from gpumix.tune.splits import describe

        pred = f" (predicted {point.predicted_tokens_per_s:.1f})" if point.predicted_tokens_per_s else ""
        console.print(
            f"[bold]run {n}/{budget}[/] {point.phase:6} {esc(describe(point.split, names))}  layers "
            f"{'/'.join(map(str, point.assignment.layers))}  →  [green]{point.tokens_per_s:.2f} t/s[/]{pred}",
            soft_wrap=True,
        )

    from gpumix.tune.session import resolve_devices

    model = str(_model_file(model, quant, as_json))  # a bad model is reported before any device is probed
    resolved = resolve_devices(_split_list(devices), rpc_list)
    names = [d.name for d in resolved]
    if not as_json:
        say(Text(f"tuning on {', '.join(names)} (budget {budget} llama-bench runs)"))
    with console.status("llama-bench running...", spinner="dots") if not as_json else nullcontext():
        result, cal = tune_machine(
            model, devices=_split_list(devices), rpc=rpc_list, resolved=resolved, budget=budget, objective=goal,
            parallel=parallel, context=ctx, settings=settings, on_point=on_point, host_offload=host_offload,
        )  # fmt: skip
    written = None
    if not no_calibration and cal.devices:
        written = save_machine_calibration(cal, cli_calibration_out(calibration_out))
    if plot:
        from gpumix.tune.plot import plot_tune

        plot_tune(result, plot)
    data = result.to_json() | {"calibration_file": str(written) if written else None}
    if as_json:
        print(json.dumps(data, indent=2))
        return
    _print_result(data)
    if result.stopped:
        say(f"[yellow]stopped early:[/] {esc(result.stopped)} (measurements so far kept)")
    if written:
        say(Text(f"calibration written to {written}"))
    if plot:
        say(Text(f"plot written to {plot}"))


def _model_file(model: str, quant: str, quiet: bool) -> Path:
    from gpumix.tune.session import resolve_model_file

    if quiet:
        return resolve_model_file(model, quant)
    with stdout_console().status(f"resolving {esc(model)}...", spinner="dots") as status:

        def report(message: str, fraction: float | None) -> None:
            done = "" if fraction is None else f" {fraction:.0%}"
            status.update(f"synthesising {esc(model)} {esc(quant)}: {esc(message)}{done}")

        path = resolve_model_file(model, quant, progress=report)
    if path.parent.name == "synth":
        say(Text(f"{model}: synthetic {quant} GGUF (random weights, exact shapes) {path}"))
    return path


def _print_result(data: dict[str, Any]) -> None:
    table = Table(title=f"splits ({data['objective']}, {data['runs']} llama-bench runs)")
    for col in ("-dev", "-ts", "layers", "output on", "t/s", "measured", "predicted"):
        table.add_column(col)
    rows = sorted(data["points"], key=lambda p: -p["tokens_per_s"])
    shown = [p for p in rows if p["measured"]] + [p for p in rows if not p["measured"]][:5]
    for p in shown:
        add_row(table, p["dev"], p["ts"], "/".join(map(str, p["layers"])), str(p["output_device"]),
                      f"{p['tokens_per_s']:.2f}", "yes" if p["measured"] else "no",
                      "-" if p["predicted_tokens_per_s"] is None else f"{p['predicted_tokens_per_s']:.2f}")  # fmt: skip
    show(table)
    best = data["best"]
    say(
        f"[bold]best:[/] -dev {esc(best['dev'])} -ts {best['ts']} (layers {'/'.join(map(str, best['layers']))}, "
        f"output on {best['output_device']}) = [green]{best['tokens_per_s']:.2f} t/s[/]"
    )
    for name, gain in data["gain_vs"].items():
        base = data["baselines"][name]
        kind = "measured" if base["measured"] else "predicted"
        say(Text(f"  {gain:.2f}x vs {name.replace('_', '-')} split (-ts {base['ts']}: {base['tokens_per_s']:.2f} t/s, {kind})"))


@testbed_app.command("up")
def testbed_up_cmd(
    fast: float = typer.Option(1.0, "--fast", help="CPU share of the fast device's core (0-1]."),
    slow: float = typer.Option(0.4, "--slow", help="CPU share of the slow device's core (cgroup quota)."),
    port_base: int = typer.Option(None, "--port-base", help="First port (default: free ports)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start two ggml-rpc-server devices pinned to separate cores, the slow one CPU-throttled."""
    from gpumix.tune.testbed import testbed_up

    bed = testbed_up((("fast", fast), ("slow", slow)), port_base=port_base)
    if as_json:
        print(json.dumps(bed.to_json(), indent=2))
        return
    for i, s in enumerate(bed.servers):
        say(Text(f"RPC{i}: {s.address}  {s.label}  pid {s.pid}" + (f"  cgroup {s.cgroup}" if s.cgroup else "")))
    say(Text(f"--rpc {bed.rpc}"))


@testbed_app.command("down")
def testbed_down_cmd() -> None:
    """Stop the test bed's servers and remove its cgroups."""
    from gpumix.tune.testbed import testbed_down

    done = testbed_down()
    for line in done or ["no test bed was up"]:
        say(Text(line))


@testbed_app.command("status")
def testbed_status_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the test bed's servers and whether they are alive."""
    from gpumix.tune.testbed import testbed_status

    bed = testbed_status()
    if as_json:
        print(json.dumps(bed.to_json() if bed else None, indent=2))
        return
    if bed is None:
        say("no test bed is up (`gpumix testbed up`)")
        return
    for i, s in enumerate(bed.to_json()["servers"]):
        state = "[green]alive[/]" if s["alive"] else "[red]gone[/]"
        say(f"RPC{i}: {esc(s['address'])}  {esc(s['role'])} ({s['cpu_fraction']:g} of core {s['core']})  {state}")
    say(Text(f"--rpc {bed.rpc}"))


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_cmd)
    app.add_typer(testbed_app, name="testbed")
