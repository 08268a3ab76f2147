from __future__ import annotations

from pathlib import Path

from gpumix.run.memlog import parse_llama_memory_breakdown

REAL_LOG = Path(__file__).parent / "data" / "llama-server-lv4-cpu-gemma3-270m.log"


def test_real_cpu_log_breakdown():
    report = parse_llama_memory_breakdown(REAL_LOG.read_text())
    host = report.row("Host")
    assert (host.self_mib, host.model_mib, host.context_mib, host.compute_mib) == (297, 235, 42, 20)
    assert not host.is_device
    assert report.row("CPU_REPACK").model_mib == 12
    # Gemma 3 has sliding-window layers: a full cache (3 layers) and an SWA cache (15 layers), 2 slots.
    assert [(kv.cells, kv.layers, kv.seqs) for kv in report.kv_caches] == [(2048, 3, 2), (1024, 15, 2)]
    # Cross-check two independent lines of the same log: KV sizes sum to the table's context column.
    assert report.kv_cache_mib == host.context_mib
    assert report.model_buffers_mib == {"CPU_Mapped": 235.16, "CPU_REPACK": 12.66}
    assert report.compute_buffers_mib == {"CPU": 20.77}
    assert report.output_buffers_mib == {"CPU": 2.0}  # 2 slots x 262,144 f32 logits, not in the table
    assert report.self_mib == report.host_self_mib == 297 + 12


# The device-row format from engines.md §1.3 (no GPU here to print a real one), with the older prefix.
DEVICE_TABLE = """\
llama_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model   context   compute    unaccounted |
llama_memory_breakdown_print: |   - CUDA0 (RTX 4090)   | 24082 = 1200 + (22000 = 19000 +    2500 +     500) +         882 |
llama_memory_breakdown_print: |   - CUDA1 (RTX 3090)   | 24135 = 9000 + (14500 = 12000 +    2000 +     500) +         635 |
llama_memory_breakdown_print: |   - Host               |                   600 =   500 +       0 +     100                |
"""


def test_device_rows_and_last_table_wins():
    report = parse_llama_memory_breakdown("noise\n" + DEVICE_TABLE.replace("22000", "1") + DEVICE_TABLE)
    cuda0 = report.row("CUDA0")
    assert cuda0.is_device and cuda0.description == "RTX 4090"
    assert (cuda0.total_mib, cuda0.free_mib, cuda0.self_mib, cuda0.unaccounted_mib) == (24082, 1200, 22000, 882)
    assert (cuda0.model_mib, cuda0.context_mib, cuda0.compute_mib) == (19000, 2500, 500)
    assert [r.name for r in report.rows] == ["CUDA0", "CUDA1", "Host"]
    assert report.host_self_mib == 600 and report.self_mib == 22000 + 14500 + 600


def test_no_table_gives_an_empty_report():
    assert parse_llama_memory_breakdown("llama-server started\n").rows == []
