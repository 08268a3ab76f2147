"""LaunchSpec: one engine process as argv + environment, the unit every export and the supervisor consume."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gpumix.kinds import Engine


class LaunchSpec(BaseModel):
    """Exactly what to exec for one process of a plan service (one per replica). Never a shell string."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str  # plan service name
    replica: int = 0
    replicas: int = 1  # how many processes the service has
    engine: Engine
    # "server" answers the service's endpoints; "rpc-worker" is a ggml-rpc-server holding one remote card of a
    # llama.cpp split across hosts (its main llama-server on another host reaches it through --rpc).
    role: Literal["server", "rpc-worker"] = "server"
    part: str | None = None  # names a worker within its service process ("rpc0", ...)
    host_name: str | None = None  # the plan host that must run this process (None: a one-machine plan)
    devices: list[str] = Field(default_factory=list)  # plan device ids this process uses, in engine order
    argv: list[str]  # argv[0] is the binary (absolute path when gpumix knows it, else a name looked up on PATH)
    env: dict[str, str]  # only the variables gpumix sets; the caller merges them over its own environment
    host: str = "127.0.0.1"  # the address it binds (always loopback; `host_name` says which machine)
    port: int
    health_path: str | None  # GET this; 200 means ready. None: ready when the port accepts a TCP connection
    cwd: str | None = None
    gpu_ids: list[str] = Field(default_factory=list)  # host GPU ids pinned (indices or UUIDs); empty = CPU only
    files: list[str] = Field(default_factory=list)  # files that must exist before starting (model weights)
    # Container form (compose): image plus the args after the image's entrypoint.
    image: str | None = None
    container_entrypoint: list[str] | None = None
    container_args: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # what a person must know to run it (exports print them)

    @property
    def name(self) -> str:
        """Unique process name: the service name, suffixed with the replica number when replicated and the part
        (rpc0, ...) for a worker."""
        name = self.service if self.replicas == 1 else f"{self.service}-{self.replica}"
        return f"{name}-{self.part}" if self.part else name

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        """http://HOST:PORT/PATH, or tcp://HOST:PORT for a process that speaks no HTTP (ggml-rpc-server)."""
        return f"{self.url}{self.health_path}" if self.health_path is not None else f"tcp://{self.host}:{self.port}"

    @property
    def uses_gpu(self) -> bool:
        return bool(self.gpu_ids)
