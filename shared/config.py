"""The one settings object, read from the environment (prefix TM_, plus NATS_URL).

Build it with `Settings()` inside `main()` / `create_app()`, never at import time, so importing any
module needs no environment. S3 credentials and endpoint are not here on purpose: boto reads the
standard AWS_* variables by itself.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.runtime.errors import MAX_BACKOFF_S

# An origin as a browser's `Origin` header spells it: scheme, host (a name, IPv4 or [IPv6]), optional port.
ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


def default_model_dir() -> Path:
    return Path.home() / ".cache" / "task-manager" / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TM_", extra="ignore")

    nats_url: str = Field(default="nats://127.0.0.1:4222", validation_alias=AliasChoices("NATS_URL", "TM_NATS_URL"))
    # Replicas for every stream, KV bucket and object store (3 on a NATS cluster).
    replicas: int = Field(default=1, ge=1, le=5)

    queue_timeout_s: float = Field(default=30.0, gt=0)
    sync_wait_s: float = Field(default=300.0, gt=0)  # upper bound of a `sync: true` submission
    ack_wait_s: float = Field(default=30.0, ge=1)
    max_retries: int = Field(default=3, ge=0, le=20)
    retry_base_delay_s: float = Field(default=0.5, ge=0)
    # The longest any retry waits: our own backoff's cap, and the most a server's Retry-After is granted.
    retry_max_delay_s: float = Field(default=MAX_BACKOFF_S, gt=0, le=MAX_BACKOFF_S)
    concurrency: int = Field(default=4, ge=1, le=256)  # messages a stage process works on at once
    stall_timeout_s: float = Field(default=300.0, gt=0)  # a stage with no progress this long is retried
    shutdown_grace_s: float = Field(default=25.0, ge=0)  # SIGTERM: finish in-flight work this long, then nak

    model_dir: Path = Field(default_factory=default_model_dir)
    # `task-manager up` downloads the routed models' missing weights in the background (0: it only says so).
    model_auto_download: bool = True
    # A copy of the GitHub release assets (same <release>/<file> layout) for hosts that cannot reach GitHub.
    model_mirror: str | None = None
    # How long a task whose model is being downloaded waits for it before a stand-in network or Lanczos runs.
    model_wait_s: float = Field(default=300.0, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Default tile size in input pixels; unset: chosen from free device memory and the model; 0: no tiling.
    tile: int | None = Field(default=None, ge=0)
    # Threads for the upscaler's host image work (PNG output bands); unset: the cores this process may use.
    cpu_threads: int | None = Field(default=None, ge=1, le=1024)

    fetch_allow_private_networks: bool = False
    # Hosts (exact names) and networks (CIDRs) the fetcher may reach even when they are private,
    # comma-separated: e.g. "minio.internal,10.20.0.0/16".
    fetch_allowlist: str = ""
    # The one directory file:// inputs and outputs may name (after `..` and symbolic links are resolved,
    # shared/egress/localfiles.py); unset or empty: every file:// URL is refused. Independent of private networks.
    file_root: Path | None = None
    fetch_max_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    fetch_timeout_s: float = Field(default=30.0, gt=0)
    fetch_connect_timeout_s: float = Field(default=10.0, gt=0)
    fetch_max_redirects: int = Field(default=5, ge=0, le=20)
    # Images up to this size travel in the work messages; larger ones go through the object store.
    inline_image_max_bytes: int = Field(default=512 * 1024, ge=0)
    input_formats: str = "png,jpeg,webp,gif,bmp,tiff"  # accepted by magic bytes, not by name
    max_input_pixels: int = Field(default=40_000_000, gt=0)  # refused before decoding (bombs)
    max_output_pixels: int = Field(default=256_000_000, gt=0)  # after scaling

    # Access: API keys (comma-separated, or one per line in a file); empty: no authentication.
    api_keys: str = Field(default="", repr=False)
    api_keys_file: Path | None = None
    dashboard_session_s: float = Field(default=12 * 3600, ge=0)  # sign-in cookie lifetime; 0: header keys only
    rate_limit_per_s: float = Field(default=20.0, gt=0)  # per client (key, else IP): token refill
    rate_limit_burst: int = Field(default=40, ge=1)
    # Wrong keys (header or sign-in form) per client address: past the burst, 429 before any key is compared.
    auth_failure_per_s: float = Field(default=0.2, gt=0)  # token refill: one more guess every 5 s
    auth_failure_burst: int = Field(default=20, ge=1)
    max_queue_depth: int = Field(default=10_000, ge=1)  # waiting messages across all work queues
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Browser pages on these origins may call /api/v1 (CORS), comma-separated exact origins
    # ("https://app.example.com,http://localhost:5173") or "*" alone; empty: no CORS headers at all.
    cors_origins: str = ""

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    # Each stage process's own /metrics (shared/runtime/metrics.py). 0: an ephemeral free port, so many instances
    # on one host never collide (the URL is in the worker's heartbeat); containers set 9464.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Loopback: /metrics has no authentication; containers listen on 0.0.0.0 for Prometheus (Dockerfile).
    metrics_host: str = "127.0.0.1"

    events_max_age_s: float = Field(default=7 * 24 * 3600, gt=0)
    # Intermediate images (TM_BLOBS) are removed when their task ends; this bounds the ones a crash left behind.
    blobs_max_age_s: float = Field(default=24 * 3600, gt=0)
    # How long an ended task stays listed and readable (GET, the list); then the sweeper removes it.
    result_ttl_s: float = Field(default=7 * 24 * 3600, gt=0)
    events_keepalive_s: float = Field(default=15.0, gt=0)  # SSE comment line while a task's stream is quiet
    # Webhooks (services/notifier): HMAC-SHA256 key for the Tm-Signature header (empty: unsigned).
    webhook_secret: str = Field(default="", repr=False)
    webhook_max_attempts: int = Field(default=6, ge=1, le=50)
    webhook_retry_base_s: float = Field(default=2.0, ge=0)  # backoff: base, 2x base, 4x ... capped at 10 min
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    dead_letters_max_age_s: float = Field(default=30 * 24 * 3600, gt=0)
    idempotency_ttl_s: float = Field(default=24 * 3600, gt=0)
    lease_ttl_s: float = Field(default=10.0, ge=2)
    heartbeat_s: float = Field(default=5.0, gt=0)

    def allowlist(self) -> list[str]:
        return [item.strip() for item in self.fetch_allowlist.split(",") if item.strip()]

    def accepted_formats(self) -> frozenset[str]:
        return frozenset(item.strip().lower() for item in self.input_formats.split(",") if item.strip())

    def keys(self) -> list[str]:
        """The accepted API keys, from TM_API_KEYS and TM_API_KEYS_FILE (never logged)."""
        keys = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        if self.api_keys_file is not None:
            keys += [line.strip() for line in self.api_keys_file.read_text().splitlines() if line.strip()]
        return keys

    def origins(self) -> list[str]:
        """The origins of TM_CORS_ORIGINS (checked by its validator)."""
        return [item.strip() for item in self.cors_origins.split(",") if item.strip()]

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: str) -> str:
        # Browsers send `Origin: scheme://host[:port]` and the match is exact, so a path, a trailing
        # slash or a missing scheme would never match: refused here rather than silently ignored.
        items = [item.strip() for item in value.split(",") if item.strip()]
        if "*" in items and len(items) > 1:
            raise ValueError("TM_CORS_ORIGINS: '*' (any origin) stands alone, not in a list")
        for item in items:
            if item != "*" and not ORIGIN.fullmatch(item):
                raise ValueError(
                    f"TM_CORS_ORIGINS: {item!r} is not an origin as browsers send it"
                    " (lowercase scheme://host[:port], no path or trailing slash)"
                )
        return value

    @field_validator("file_root", mode="before")
    @classmethod
    def _absolute_file_root(cls, value: object) -> object:
        if value is None or value == "":
            return None  # TM_FILE_ROOT= (empty) is the same as unset: file:// stays off
        if isinstance(value, str | Path) and not Path(value).is_absolute():
            raise ValueError("TM_FILE_ROOT must be an absolute path (file:// URLs are confined to it)")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
            raise ValueError("TM_DEVICE must be auto, cpu, cuda or cuda:N")
        return value
