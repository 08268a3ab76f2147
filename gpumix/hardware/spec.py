"""Typed descriptions of devices: a catalog entry (GpuSpec), a device in a machine (Device), and the reference
that names one device in a whole plan (DeviceRef)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from gpumix.errors import GpumixError
from gpumix.kinds import DeviceKind

# A host name in a plan: DNS-label-like (letters, digits, '.', '_', '-'; starts with a letter or digit), never '/'
# (the separator of device ids), at most 63 characters.
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_DEVICE_ID = re.compile(r"^(?:(?P<host>[^/]+)/)?(?P<kind>gpu|cpu)(?P<number>\d{1,4})$")


class GpuSpec(BaseModel):
    """One row of the hardware catalog (gpumix/hardware/data/gpus.csv); every figure has a source there."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str  # stable slug, e.g. "rtx-4090"
    name: str  # display name, e.g. "RTX 4090"
    kind: DeviceKind = "gpu"
    vendor: str = "NVIDIA"
    arch: str
    compute_capability: str | None = None  # "8.9"
    vram_bytes: int
    mem_bandwidth_gb_per_s: float  # decimal GB/s, vendor peak
    fp16_tflops: float | None = None  # dense tensor FP16 (GeForce: FP16 accumulate)
    bf16_tflops: float | None = None
    fp8_tflops: float | None = None
    int8_tops: float | None = None
    # Non-tensor FP32 ALU peak. Apple GPUs have no separate tensor rate (their matrix units run at the ALU rate,
    # FP16 as fast as FP32), so this is the compute figure prefill uses for them.
    fp32_tflops: float | None = None
    # Compute units (SMs / CUs / Xe cores / Apple GPU cores) and boost clock, and the dense FP16 matrix peak derived
    # from them (gpumix.hardware.compute): prefill's compute peak where no FP16/FP32 figure is published.
    compute_units: int | None = None
    boost_clock_mhz: float | None = None
    fp16_tflops_derived: float | None = None
    fp8_supported: bool = False
    pcie_gen: int | None = None
    pcie_lanes: int | None = None
    tdp_w: float | None = None
    price_gbp_per_month: float | None = None
    price_gbp_purchase: float | None = None
    aliases: tuple[str, ...] = ()
    source: str = ""

    @property
    def matrix_tflops(self) -> float | None:
        """The compute peak prefill uses: published dense FP16 tensor, else published FP32, else derived."""
        return self.fp16_tflops or self.fp32_tflops or self.fp16_tflops_derived

    @property
    def alu_tflops(self) -> float | None:
        """Plain FP32 ALU peak: published `fp32_tflops`, else units x clock x FP32 lanes (gpumix.hardware.compute)."""
        if self.fp32_tflops:
            return self.fp32_tflops
        if self.compute_units and self.boost_clock_mhz:
            from gpumix.hardware.compute import derived_fp32_tflops

            return derived_fp32_tflops(self.arch, self.compute_units, self.boost_clock_mhz)
        return None

    @property
    def matrix_tflops_derived(self) -> bool:
        """True when `matrix_tflops` is the figure derived from units × clock (nothing published)."""
        return not (self.fp16_tflops or self.fp32_tflops) and bool(self.fp16_tflops_derived)


def device_id(host: str | None, index: int) -> str:
    """gpu0 / cpu0 (index -1) on a host-less plan, HOST/gpu0 with a host."""
    local = f"gpu{index}" if index >= 0 else f"cpu{-index - 1}"
    return f"{host}/{local}" if host else local


class DeviceRef(BaseModel):
    """One device of a plan: its host (None on a one-machine plan) and its index there (the CUDA index under
    CUDA_DEVICE_ORDER=PCI_BUS_ID; CPU devices -1, -2, ...). `id` is the plan-wide name: gpu0, cpu0 on a host-less
    plan; HOST/gpu0, HOST/cpu0 when the device has a host."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str | None = None
    index: int

    @property
    def id(self) -> str:
        return device_id(self.host, self.index)

    def __str__(self) -> str:
        return self.id

    @classmethod
    def parse(cls, text: str) -> DeviceRef:
        """`gpu0`, `cpu1`, `box-a/gpu0` → DeviceRef; anything else is a GpumixError saying what is expected."""
        found = _DEVICE_ID.match(text.strip())
        host = found and found["host"]
        if found is None or (host is not None and not re.match(HOST_PATTERN, host)):
            raise GpumixError(f"{text!r} is not a device id", hint="device ids look like gpu0, cpu0 or HOST/gpu1")
        number = int(found["number"])
        return cls(host=host, index=number if found["kind"] == "gpu" else -1 - number)


class Device(BaseModel):
    """A concrete device of a machine (discovered, described in a file, or hypothetical for planning)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int  # CUDA index under CUDA_DEVICE_ORDER=PCI_BUS_ID (CPU devices: -1)
    spec: GpuSpec
    memory_total_bytes: int
    memory_free_bytes: int
    host: str | None = None
    uuid: str | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    driver_version: str | None = None
    threads: int | None = None  # CPU devices: cores used
    # What the plan assumed about this device where the file did not say it (the host's CPU and RAM, the board slot
    # a GPU sits in): one sentence, shown in the plan (gpumix.hardware.platforms).
    assumed: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ref(self) -> DeviceRef:
        return DeviceRef(host=self.host, index=self.index)

    @property
    def id(self) -> str:
        """The plan-wide device id (DeviceRef.id): gpu0, cpu0, HOST/gpu0 ..."""
        return device_id(self.host, self.index)

    @property
    def kind(self) -> DeviceKind:
        return self.spec.kind
