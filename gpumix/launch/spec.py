"""LaunchSpec: one engine process as argv + environment, the unit every export and the supervisor consume."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LaunchSpec(BaseModel):
    """Exactly what to exec for one process of a plan service (one per replica). Never a shell string."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str  # plan service name
    replica: int = 0
    replicas: int = 1  # how many processes the service has
    engine: str
    argv: list[str]  # argv[0] is the binary (absolute path when gpumix knows it, else a name looked up on PATH)
    env: dict[str, str]  # only the variables gpumix sets; the caller merges them over its own environment
    host: str = "127.0.0.1"
    port: int
    health_path: str  # GET this; 200 means ready
    cwd: str | None = None
    gpu_ids: list[str] = Field(default_factory=list)  # host GPU ids pinned (indices or UUIDs); empty = CPU only
    files: list[str] = Field(default_factory=list)  # files that must exist before starting (model weights)
    # Container form (compose): image plus the args after the image's entrypoint.
    image: str | None = None
    container_entrypoint: list[str] | None = None
    container_args: list[str] = Field(default_factory=list)

    @property
    def name(self) -> str:
        """Unique process name: the service name, suffixed with the replica number when replicated."""
        return self.service if self.replicas == 1 else f"{self.service}-{self.replica}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        return f"{self.url}{self.health_path}"

    @property
    def uses_gpu(self) -> bool:
        return bool(self.gpu_ids)
