"""NVML discovery against a fake `pynvml` (no GPU here), and the real no-driver path of this machine."""

from __future__ import annotations

import sys

import pytest

from gpumix.errors import GpumixError
from gpumix.hardware.discovery import discover_machine
from gpumix.units import GiB, MiB


def test_discovers_cards_with_free_memory_links_and_catalog_match(monkeypatch, nvml_fakes):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = nvml_fakes.fake_pynvml(nvml_fakes.HYBRID, topology={(0, 1): 30, (0, 2): 50, (1, 2): 50})
    machine = discover_machine(nvml)
    assert machine.driver_version == "570.86.15"
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in machine.index_note
    rtx4090, rtx5060, mystery = machine.gpus
    assert [g.device.index for g in machine.gpus] == [0, 1, 2]
    assert rtx4090.catalog_id == "rtx-4090" and rtx4090.device.name == "RTX 4090"
    assert rtx4090.device.memory_total_bytes == 24564 * MiB  # NVML's numbers, not the catalog's
    assert rtx4090.nvml_bandwidth_gb_per_s == pytest.approx(1008.0, abs=0.5)  # 384 b x 10501 MHz x 2
    assert (rtx4090.device.pcie_gen, rtx4090.device.pcie_width, rtx4090.pcie_gen_current) == (4, 16, 1)
    # another process holds 4 GiB on the 5060 Ti: it counts against free memory
    assert rtx5060.catalog_id == "rtx-5060-ti-16gb"
    assert rtx5060.device.memory_free_bytes == 16311 * MiB - 4 * GiB - 300 * MiB
    assert rtx5060.compute_processes == 1
    assert rtx5060.nvml_bandwidth_gb_per_s == pytest.approx(448.0, abs=0.1)
    assert rtx5060.device.driver_version == "570.86.15" and rtx5060.device.uuid.startswith("GPU-")
    # unknown card: still listed, with a warning and a spec built from NVML
    assert mystery.catalog_id is None
    assert mystery.device.spec.vram_bytes == 48 * GiB and mystery.device.spec.compute_capability == "8.6"
    assert mystery.nvml_bandwidth_gb_per_s is None  # bus width not supported on that card
    assert any("Mystery Accelerator" in w and "bandwidth is unknown" in w for w in machine.warnings)
    assert [(x.a, x.b, x.label) for x in machine.links] == [(0, 1, "PHB"), (0, 2, "SYS"), (1, 2, "SYS")]
    assert [d.name for d in machine.devices] == ["RTX 4090", "RTX 5060 Ti 16GB", "NVIDIA Mystery Accelerator"]
    assert nvml.calls == ["init", "shutdown"]


def test_indices_follow_pci_bus_order(monkeypatch, nvml_fakes):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = [
        nvml_fakes.HYBRID[1],
        nvml_fakes.HYBRID[0],
    ]  # NVML enumerating out of bus order (should not happen, but CUDA sorts by bus)
    machine = discover_machine(nvml_fakes.fake_pynvml(gpus))
    assert [(g.device.index, g.nvml_index, g.device.name) for g in machine.gpus] == [
        (0, 1, "RTX 4090"),
        (1, 0, "RTX 5060 Ti 16GB"),
    ]
    assert any("PCI bus order" in w for w in machine.warnings)


def test_nvlink_pairs_are_counted(monkeypatch, nvml_fakes):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    a, b = "00000000:07:00.0", "00000000:0F:00.0"
    gpus = [
        nvml_fakes.FakeGpu(
            "NVIDIA A100-SXM4-80GB", a, 81920 * MiB, cc=(8, 0), nvlinks={i: b.lower() for i in range(12)}
        ),
        nvml_fakes.FakeGpu("NVIDIA A100-SXM4-80GB", b, 81920 * MiB, cc=(8, 0), nvlinks={i: a for i in range(12)}),
    ]
    machine = discover_machine(nvml_fakes.fake_pynvml(gpus, topology={(0, 1): 40}))
    assert {g.catalog_id for g in machine.gpus} == {"a100-sxm4-80gb"}
    link = machine.link(1, 0)
    assert (link.topology, link.nvlink_count, link.label) == ("NODE", 12, "NV12")


def test_variant_with_other_memory_is_not_matched_to_the_catalog_card(monkeypatch, nvml_fakes):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    machine = discover_machine(
        nvml_fakes.fake_pynvml([nvml_fakes.FakeGpu("NVIDIA GeForce RTX 3060", "0000:01:00.0", 8 * GiB, cc=(8, 6))])
    )
    assert machine.gpus[0].catalog_id is None  # the catalog has the 12 GB card, not this 8 GB one
    assert any("CUDA_VISIBLE_DEVICES='1'" in w for w in machine.warnings)
    assert machine.links == []


def test_no_driver_is_a_clear_error_with_the_devices_file_hint(nvml_fakes):
    nvml = nvml_fakes.fake_pynvml([], fail_init=nvml_fakes.NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    with pytest.raises(GpumixError, match="no NVIDIA driver found") as err:
        discover_machine(nvml)
    assert "--devices-file" in err.value.hint


def test_driver_without_gpus_is_a_clear_error(nvml_fakes):
    nvml = nvml_fakes.fake_pynvml([])
    with pytest.raises(GpumixError, match="reports no GPUs"):
        discover_machine(nvml)
    assert nvml.calls == ["init", "shutdown"]


def test_fake_module_is_used_when_injected_as_pynvml(monkeypatch, nvml_fakes):
    monkeypatch.setitem(sys.modules, "pynvml", nvml_fakes.fake_pynvml(nvml_fakes.HYBRID[:1]))
    assert discover_machine().gpus[0].catalog_id == "rtx-4090"


def _real_nvml_works() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_real_machine_without_driver_gives_a_clear_error():
    if _real_nvml_works():
        machine = discover_machine()  # a GPU machine: the real thing must work
        assert machine.gpus and all(g.device.memory_total_bytes > 0 for g in machine.gpus)
        return
    with pytest.raises(GpumixError, match="no NVIDIA driver found") as err:
        discover_machine()
    assert "--devices-file" in err.value.hint


def test_fake_matches_the_real_pynvml_api(nvml_fakes):
    """Every call and constant the fake provides exists in the installed nvidia-ml-py, with the same values."""
    import pynvml

    from gpumix.hardware.discovery import NVLINK_MAX_LINKS, TOPOLOGY_LABELS

    fake = nvml_fakes.fake_pynvml([])
    for name in dir(fake):
        if name.startswith("nvml"):
            assert callable(getattr(pynvml, name, None)), name
    assert (pynvml.NVML_CLOCK_MEM, pynvml.NVML_FEATURE_ENABLED) == (fake.NVML_CLOCK_MEM, fake.NVML_FEATURE_ENABLED)
    assert pynvml.NVML_NVLINK_MAX_LINKS == NVLINK_MAX_LINKS
    real_levels = {
        pynvml.NVML_TOPOLOGY_INTERNAL: "BOARD",
        pynvml.NVML_TOPOLOGY_SINGLE: "PIX",
        pynvml.NVML_TOPOLOGY_MULTIPLE: "PXB",
        pynvml.NVML_TOPOLOGY_HOSTBRIDGE: "PHB",
        pynvml.NVML_TOPOLOGY_NODE: "NODE",
        pynvml.NVML_TOPOLOGY_SYSTEM: "SYS",
    }
    assert real_levels == TOPOLOGY_LABELS
    assert issubclass(pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError)
