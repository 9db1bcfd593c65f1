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

    sha256: str | None = None
    """SHA-256 of the model file that was measured (the server refuses any other); None when the service
    names its model by URI alone."""
    device: Device
    """Device the replica's server ran the model on, as it reports (cuda only for a CUDA or TensorRT provider)."""
    requested_device: Device
    """Device the profile was asked for; differs from device when no usable GPU was found."""
    providers: list[str] = Field(default_factory=list)
    """onnxruntime execution providers the server reports for the model."""
    threads: int = Field(ge=1)
    """onnxruntime intra-op threads."""
    concurrency: int = Field(ge=1)
    """Requests in flight during the throughput phase: the server's runs in flight times its batch size."""
    max_batch_size: int = Field(ge=1)
    """The server's dynamic batching (1 is off)."""
    max_batch_delay_ms: float = Field(default=0, ge=0)
    """Longest a request waits for a batch to fill; added to the batched latency."""
    p50_latency_ms: float = Field(ge=0)
    """Median latency of one batch-1 request over HTTP, one at a time."""
    p90_latency_ms: float = Field(ge=0)
    """90th percentile latency of one request at a time."""
    p99_latency_ms: float = Field(ge=0)
    """99th percentile latency of one request at a time."""
    latency_samples: int = Field(ge=1)
    """Requests timed for the percentiles."""
    throughput_per_replica: float = Field(ge=0)
    """Requests per second the replica answered in the closed-loop phase."""
    loaded_p99_latency_ms: float = Field(ge=0)
    """99th percentile latency of a request during the throughput phase (the replica saturated)."""
    throughput_seconds: float = Field(ge=0)
    """Length of the throughput phase."""
    onnxruntime: str = ""
    """onnxruntime version of the image."""
    peak_resident_bytes: int | None = Field(default=None, ge=0)
    """Most memory the server process held over the profile (its resident high-water mark: model, sessions,
    runtime and the profile's requests); None when the server did not report it."""
    note: str | None = None
    """Anything the reader should know, such as a GPU that was asked for and not found."""

    @property
    def slo_latency_ms(self) -> float:
        """The p99 placement holds against the SLO: the worse of an unloaded replica's and a saturated one's.

        Both were measured end to end through the server (HTTP, decoding, batching with its delay), and
        placement plans replicas below saturation, so a replica in service sees no worse than this.
        """
        return max(self.p99_latency_ms, self.loaded_p99_latency_ms)


class ProfileFailure(ApiModel):
    """What a profile that could not measure writes instead, so the operator can say why."""

    error: str
    """What went wrong."""
