"""The enum-like names every stage shares, defined once: engines, placement and service modes, objectives, device
and model kinds, PCIe topologies. Each `Literal` type has a tuple of its values (for CLI checks and messages)."""

from __future__ import annotations

from typing import Literal, get_args

Engine = Literal["llama.cpp", "vllm", "tei", "whisper", "image"]
PlacementMode = Literal["single", "layer_split", "tensor_parallel", "pipeline_parallel", "replica", "cpu_offload"]
ServiceMode = Literal["auto", PlacementMode]  # what a plan file may ask for; "auto" lets the planner choose
Objective = Literal["latency", "throughput"]
DeviceKind = Literal["gpu", "cpu"]
ModelKind = Literal["llm", "embedding", "reranker", "image", "audio"]
# An image service's engine setting: sd-server's defaults, or its low-memory setting (models.yaml `low_memory`).
# A plan file may also say "auto": the default where it fits, else the low-memory setting.
MemorySetting = Literal["default", "low"]
MemoryChoice = Literal["auto", MemorySetting]
Topology = Literal["PIX", "PXB", "PHB", "NODE", "SYS"]  # nvidia-smi topo -m, best to worst

ENGINES: tuple[Engine, ...] = get_args(Engine)
LLM_ENGINES: tuple[Engine, ...] = ("llama.cpp", "vllm")  # engines that run a transformer LLM layer by layer
PLACEMENT_MODES: tuple[PlacementMode, ...] = get_args(PlacementMode)
SERVICE_MODES: tuple[str, ...] = get_args(ServiceMode)
SPLIT_MODES: tuple[PlacementMode, ...] = ("layer_split", "pipeline_parallel", "cpu_offload")  # layers per device
OBJECTIVES: tuple[Objective, ...] = get_args(Objective)
DEVICE_KINDS: tuple[DeviceKind, ...] = get_args(DeviceKind)
MODEL_KINDS: tuple[ModelKind, ...] = get_args(ModelKind)
