"""How a scoring run is laid out on a Ray cluster, and the Ray version it is written against.

Kept free of ``import ray`` so that the CLI, the server and the job manager can name the engine's
options (and print a clear error) on hosts where the ``ray`` extra is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RAY_PIN", "RayEngineConfig", "require_ray"]

# map_batches' arguments changed twice in recent releases (``compute=ActorPoolStrategy`` →
# ``concurrency`` → ``compute`` again, with ``concurrency`` and ``**ray_remote_args`` deprecated in
# 2.5x): the engine is written and tested against this minor release and refuses any other.
RAY_PIN = (2, 60)
INSTALL_HINT = "pip install 'xal-ml[ray]'  (ray[data]>=2.60,<2.61)"


@dataclass(frozen=True)
class RayEngineConfig:
    """Where and how wide a Ray scoring run is.

    Attributes:
        address: ``"auto"`` (join the cluster this host belongs to, ``ray start`` ran here),
            ``"local"`` (start a private single-node cluster for this run), or an explicit
            ``HOST:PORT`` / ``ray://HOST:PORT``. Ignored when this process is already connected.
        workers: scorer actors (each loads the model once); on GPU nodes one per GPU.
        cpus_per_worker: logical CPUs Ray reserves per actor; also its ONNX Runtime / torch threads.
        gpus_per_worker: GPUs per actor (0 on CPU hosts, 1 on GPU nodes; fractions share a card).
        read_cpus: logical CPUs reserved per pool-chunk read task. Reading is ~10× cheaper than the
            forward pass, so a small share keeps reads from starving the actors of CPU slots.
        read_tasks: chunk reads in flight at once (default two per worker: enough to keep every actor
            fed, and each new read worker process costs an interpreter start and the imports).
    """

    address: str = "auto"
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    read_cpus: float = 0.25
    read_tasks: int | None = None

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("ray address: expected 'auto', 'local', HOST:PORT or ray://HOST:PORT, got ''")
        if self.workers < 1:
            raise ValueError(f"workers: must be >= 1, got {self.workers}")
        if self.read_tasks is not None and self.read_tasks < 1:
            raise ValueError(f"read_tasks: must be >= 1, got {self.read_tasks}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0 or self.read_cpus <= 0:
            raise ValueError(
                f"cpus_per_worker and read_cpus must be > 0 and gpus_per_worker >= 0, got "
                f"{self.cpus_per_worker}, {self.read_cpus}, {self.gpus_per_worker}"
            )

    @property
    def threads_per_worker(self) -> int:
        return max(1, int(self.cpus_per_worker))

    @property
    def concurrent_reads(self) -> int:
        return self.read_tasks if self.read_tasks is not None else 2 * self.workers


def require_ray():
    """Import Ray, or explain how to install the version this engine is pinned to."""
    try:
        import ray
        import ray.data  # noqa: F401 - the `data` extra (pyarrow, pandas) must be there too
    except ImportError as error:
        raise ImportError(f"the Ray engine needs Ray Data: {INSTALL_HINT} ({error})") from None
    version = tuple(int(part) for part in ray.__version__.split(".")[:2])
    if version != RAY_PIN:
        raise ImportError(f"the Ray engine is pinned to Ray {RAY_PIN[0]}.{RAY_PIN[1]}.x, found {ray.__version__}: "
                          f"{INSTALL_HINT}")
    return ray
