"""A fake `pynvml` module for discovery tests (no GPU on the test machines)."""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import pytest

from gpumix.units import GiB, MiB


@dataclass
class FakeGpu:
    name: str
    bus_id: str
    total: int
    used_by_others: int = 0
    cc: tuple[int, int] = (8, 9)
    bus_bits: int | None = 384
    mem_mhz: int | None = 10501
    pcie_cur: tuple[int, int] = (1, 16)  # idle link
    pcie_max: tuple[int, int] = (4, 16)
    processes: int = 0
    nvlinks: dict[int, str] = field(default_factory=dict)  # link number -> remote bus id


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's name
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
    pass


def fake_pynvml(gpus: list[FakeGpu], topology: dict[tuple[int, int], int] | None = None, fail_init=None):
    """A module with the pynvml calls discovery uses; handles are NVML indices."""
    mod = types.ModuleType("pynvml")
    mod.NVMLError = NVMLError
    mod.NVML_CLOCK_MEM = 2
    mod.NVML_NVLINK_MAX_LINKS = 18
    mod.NVML_FEATURE_ENABLED = 1
    mod.calls = []

    def init():
        mod.calls.append("init")
        if fail_init:
            raise fail_init

    def unsupported(*_):
        raise NVMLError_NotSupported("Not Supported")

    def memory(h):
        g = gpus[h]
        return types.SimpleNamespace(total=g.total, free=g.total - g.used_by_others - 300 * MiB, used=0)

    def nvlink_state(h, link):
        if not gpus[h].nvlinks:
            raise NVMLError_NotSupported("Not Supported")
        if link >= 12:
            raise NVMLError("invalid argument")
        return 1 if link in gpus[h].nvlinks else 0

    mod.nvmlInit = init
    mod.nvmlShutdown = lambda: mod.calls.append("shutdown")
    mod.nvmlSystemGetDriverVersion = lambda: "570.86.15"
    mod.nvmlDeviceGetCount = lambda: len(gpus)
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetName = lambda h: gpus[h].name
    mod.nvmlDeviceGetUUID = lambda h: f"GPU-0000000{h}-aaaa-bbbb-cccc-dddddddddddd"
    mod.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=gpus[h].bus_id)
    mod.nvmlDeviceGetMemoryInfo = memory
    mod.nvmlDeviceGetCudaComputeCapability = lambda h: gpus[h].cc
    mod.nvmlDeviceGetComputeRunningProcesses = lambda h: [object()] * gpus[h].processes
    mod.nvmlDeviceGetCurrPcieLinkGeneration = lambda h: gpus[h].pcie_cur[0]
    mod.nvmlDeviceGetCurrPcieLinkWidth = lambda h: gpus[h].pcie_cur[1]
    mod.nvmlDeviceGetMaxPcieLinkGeneration = lambda h: gpus[h].pcie_max[0]
    mod.nvmlDeviceGetMaxPcieLinkWidth = lambda h: gpus[h].pcie_max[1]
    mod.nvmlDeviceGetMemoryBusWidth = lambda h: gpus[h].bus_bits if gpus[h].bus_bits else unsupported()
    mod.nvmlDeviceGetMaxClockInfo = lambda h, clock: gpus[h].mem_mhz if clock == 2 and gpus[h].mem_mhz else 0
    mod.nvmlDeviceGetTopologyCommonAncestor = lambda a, b: (topology or {}).get((min(a, b), max(a, b)), 50)
    mod.nvmlDeviceGetNvLinkState = nvlink_state
    mod.nvmlDeviceGetNvLinkRemotePciInfo = lambda h, link: types.SimpleNamespace(busId=gpus[h].nvlinks[link])
    return mod


HYBRID = [
    FakeGpu("NVIDIA GeForce RTX 4090", "00000000:01:00.0", 24564 * MiB),
    FakeGpu("NVIDIA GeForce RTX 5060 Ti", "00000000:02:00.0", 16311 * MiB, used_by_others=4 * GiB, processes=1,
            cc=(12, 0), bus_bits=128, mem_mhz=14001, pcie_max=(5, 8)),
    FakeGpu("NVIDIA Mystery Accelerator", "00000000:81:00.0", 48 * GiB, cc=(8, 6), bus_bits=None),
]  # fmt: skip


@pytest.fixture
def nvml_fakes() -> types.SimpleNamespace:
    """FakeGpu, fake_pynvml(gpus, topology, fail_init), the error classes and a hybrid-box machine."""
    return types.SimpleNamespace(
        FakeGpu=FakeGpu,
        fake_pynvml=fake_pynvml,
        HYBRID=HYBRID,
        NVMLError=NVMLError,
        NVMLError_LibraryNotFound=NVMLError_LibraryNotFound,
    )
