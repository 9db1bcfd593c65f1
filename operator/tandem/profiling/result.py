"""The profile's JSON: what `tandem profile` prints and writes to its termination message.

The operator reads it from the profile pod's status (as it reads the trainer's artifact), so the contract is a
model both sides import; it stays well under the 4096 bytes Kubernetes keeps of a termination message.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field

from tandem.api.base import ApiModel


class Device(StrEnum):
    """Where onnxruntime ran the model."""

    CPU = "cpu"
    CUDA = "cuda"


class ProfileResult(ApiModel):
    """Latency and throughput of one model on one replica's resources, with the settings that produced them."""

    # A newer profiler image may report more; an older operator reads what it knows (unlike API specs).
    model_config = ConfigDict(extra="ignore")

    sha256: str
    """SHA-256 of the model file that was measured."""
    device: Device
    """Device the session actually ran on (cuda only when onnxruntime's CUDA provider took the model)."""
    requested_device: Device
    """Device the profile was asked for; differs from device when no usable GPU was found."""
    providers: list[str] = Field(default_factory=list)
    """onnxruntime execution providers of the session, in priority order."""
    threads: int = Field(ge=1)
    """onnxruntime intra-op threads."""
    concurrency: int = Field(ge=1)
    """Runs in flight at once during the throughput phase (the server's workers)."""
    max_batch_size: int = Field(ge=1)
    """Rows per run in the throughput phase (the server's dynamic batching; 1 is off)."""
    max_batch_delay_ms: float = Field(default=0, ge=0)
    """Longest a request waits for a batch to fill; added to the batched latency."""
    p50_latency_ms: float = Field(ge=0)
    """Median latency of one request at batch 1, unloaded."""
    p90_latency_ms: float = Field(ge=0)
    """90th percentile latency at batch 1."""
    p99_latency_ms: float = Field(ge=0)
    """99th percentile latency at batch 1."""
    latency_samples: int = Field(ge=1)
    """Requests timed for the percentiles."""
    throughput_per_replica: float = Field(ge=0)
    """Requests per second sustained in the closed-loop phase: rows completed over wall time."""
    loaded_p99_latency_ms: float = Field(ge=0)
    """99th percentile time of one run during the throughput phase (a full batch under load)."""
    throughput_seconds: float = Field(ge=0)
    """Length of the throughput phase."""
    onnxruntime: str = ""
    """onnxruntime version."""
    cpus: int = Field(default=1, ge=1)
    """CPUs the process could use."""
    note: str | None = None
    """Anything the reader should know, such as a GPU that was asked for and not found."""

    @property
    def slo_latency_ms(self) -> float:
        """The latency a request can see under the serving settings, as placement compares it with the SLO.

        Without batching that is the batch-1 p99. With batching a request may wait the batch delay and then
        ride a full batch, so the bound is that delay plus the p99 of a full batch run under load.
        """
        if self.max_batch_size <= 1:
            return self.p99_latency_ms
        return max(self.p99_latency_ms, self.max_batch_delay_ms + self.loaded_p99_latency_ms)


class ProfileFailure(ApiModel):
    """What a profile that could not measure writes instead, so the operator can say why."""

    error: str
    """What went wrong."""
