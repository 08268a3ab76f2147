"""Typed descriptions of devices: a catalog entry (GpuSpec) and a device in a machine (Device)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from gpumix.kinds import DeviceKind


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
    fp8_supported: bool = False
    pcie_gen: int | None = None
    pcie_lanes: int | None = None
    tdp_w: float | None = None
    price_gbp_per_month: float | None = None
    price_gbp_purchase: float | None = None
    aliases: tuple[str, ...] = ()
    source: str = ""


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

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> DeviceKind:
        return self.spec.kind
