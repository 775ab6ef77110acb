"""Gateway settings: environment variables prefixed ``SKIN_`` and an optional ``.env`` file.

Read once through :func:`get_settings`; tests build ``Settings(...)`` directly and pass it to
``create_app``. API keys are never configured in clear: ``SKIN_API_KEY_HASHES`` holds SHA-256
hex digests (``python -m serving.security new-key`` makes a key and its digest). Without any,
the gateway refuses to start unless ``SKIN_ALLOW_NO_AUTH=true`` says so for local work.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$")


class Settings(BaseSettings):
    """Every knob of the gateway; each field is the env var ``SKIN_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="SKIN_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="address `python -m serving` binds")
    port: int = Field(8000, description="port `python -m serving` binds")
    triton_url: str = Field("127.0.0.1:8001", description="Triton gRPC endpoint host:port")
    model_name: str = Field("skin_lesion", description="model name in Triton's repository")
    model_repository: Path | None = Field(
        Path("model_repository"),
        description="folder with <model>/<version>/metadata.json; unset: Triton's metadata only",
    )
    triton_timeout_s: float = Field(10.0, gt=0, description="deadline of one prediction at Triton")
    triton_retries: int = Field(2, ge=0, description="retries on UNAVAILABLE within the deadline")
    model_info_ttl_s: float = Field(
        30.0, ge=0, description="how long served-version info is cached"
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After header of 503 answers")
    database_url: str = Field(
        "sqlite:///.cache/serving/predictions.db",
        description="SQLAlchemy URL: sqlite:///path (WAL) or postgresql+psycopg://...",
    )
    rules_path: Path = Field(Path("configs/body_location_rules.yaml"), description="rules YAML")
    api_key_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="sha256 hex digests of valid API keys, comma-separated"
    )
    allow_no_auth: bool = Field(False, description="run WITHOUT API keys (local development only)")
    metrics_public: bool = Field(False, description="serve /metrics without an API key")
    max_upload_bytes: int = Field(10 * 2**20, gt=0, description="largest accepted image file")
    max_pixels: int = Field(40_000_000, gt=0, description="largest accepted width x height")
    decode_threads: int = Field(
        0,
        ge=0,
        description="photos decoded at once (0: one per CPU core); more only adds thread "
        "switching, fewer leaves cores idle",
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="largest request line plus headers (400 beyond)"
    )
    rate_limit_per_s: float = Field(
        20.0, ge=0, description="requests/s per API key in this process (0: no limit)"
    )
    rate_limit_burst: int = Field(40, ge=1, description="requests a key may send at once")
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="browser origins allowed to call the API, comma-separated (none by default)",
    )
    image_dir: Path = Field(Path(".cache/serving/images"), description="consented images")
    log_level: str = Field("info", description="uvicorn and app log level")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="JSON lines, plain text, or auto: text on a terminal, JSON otherwise "
        "(serving/logs.py)",
    )
    # Monitoring (contracts.drift, serving.retraining): GET /v1/monitoring and its gauges.
    drift_window: int = Field(500, ge=1, description="the last N predictions are the window")
    drift_window_days: float | None = Field(
        None, gt=0, description="and only those of the last D days (unset: no age limit)"
    )
    drift_min_window: int = Field(50, ge=1, description="fewer values: 'insufficient data'")
    drift_psi_bound: float = Field(0.2, gt=0, description="PSI above this (and p below) = drift")
    drift_p_value: float = Field(0.01, gt=0, le=1, description="chi-square p-value bound")
    drift_refresh_s: float = Field(60.0, ge=0, description="gauge refresh period; 0: on request")
    retrain_min_balanced_accuracy: float = Field(0.5, ge=0, le=1, description="live floor")
    retrain_max_drop: float = Field(0.1, ge=0, le=1, description="live vs validation drop")
    retrain_min_referral_sensitivity: float = Field(0.85, ge=0, le=1, description="live floor")
    retrain_min_cases: int = Field(30, ge=1, description="confirmed cases a live bound needs")
    # The gate (contracts.quality, docs/gateway.md "What is refused"): the thresholds come from
    # the served version's metadata.json (chosen at export from the training images); each
    # SKIN_QUALITY_* setting overrides one of them.
    refusal_mode: Literal["reject", "flag"] = Field(
        "reject",
        description="how a refused upload is answered: reject (422 with the reason) or flag "
        "(201 with `refused` and the ranking withheld)",
    )
    quality_checks: bool = Field(
        True, description="run the image-quality checks (on/off); off: only the model's score"
    )
    ood_checks: bool = Field(
        True, description="refuse on the model's out-of-distribution score, where it has one"
    )
    quality_min_short_side: int | None = Field(
        None, ge=1, description="override: shorter side in pixels, at least"
    )
    quality_max_aspect: float | None = Field(
        None, ge=1, description="override: long side / short side, at most"
    )
    quality_min_contrast: float | None = Field(
        None, ge=0, description="override: luminance standard deviation, at least"
    )
    quality_min_brightness: float | None = Field(
        None, ge=0, le=255, description="override: mean luminance (0-255), at least"
    )
    quality_max_brightness: float | None = Field(
        None, ge=0, le=255, description="override: mean luminance (0-255), at most"
    )
    quality_min_sharpness: float | None = Field(
        None, ge=0, description="override: variance of the Laplacian, at least"
    )
    quality_min_colourfulness: float | None = Field(
        None, ge=0, description="override: colourfulness (Hasler-Suesstrunk), at least"
    )

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip().lower() for v in value.split(",") if v.strip()]
        return value

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        return (
            [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        )

    @field_validator("cors_allow_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not _ORIGIN.match(v)]
        if bad:
            raise ValueError(
                f"{bad} are not origins: give each as scheme://host[:port] with no path, "
                "and no '*' (list the exact origins of the web apps that call the API)"
            )
        return value

    @field_validator("api_key_hashes")
    @classmethod
    def _hex_digests(cls, value: list[str]) -> list[str]:
        # Say which entries, never what they hold: a key pasted here by mistake stays secret.
        bad = [i + 1 for i, v in enumerate(value) if not _HEX64.match(v)]
        if bad:
            raise ValueError(
                f"entries {bad} are not sha256 hex digests; store digests, not keys: "
                "`python -m serving.security hash-key` prints one"
            )
        return value

    @model_validator(mode="after")
    def _auth_configured(self) -> Settings:
        if not self.api_key_hashes and not self.allow_no_auth:
            raise ValueError(
                "no API keys configured: set SKIN_API_KEY_HASHES to sha256 digests "
                "(`python -m serving.security new-key` makes a key and its digest), or set "
                "SKIN_ALLOW_NO_AUTH=true for local development only"
            )
        return self

    @model_validator(mode="after")
    def _brightness_range(self) -> Settings:
        low, high = self.quality_min_brightness, self.quality_max_brightness
        if low is not None and high is not None and low >= high:
            raise ValueError(
                f"SKIN_QUALITY_MIN_BRIGHTNESS ({low}) must be below SKIN_QUALITY_MAX_BRIGHTNESS "
                f"({high}): every image would be refused"
            )
        return self

    @property
    def quality_overrides(self) -> dict[str, float]:
        """The quality thresholds the settings give, by ``QualityThresholds`` field name."""
        prefix = "quality_"
        return {
            name.removeprefix(prefix): value
            for name in type(self).model_fields
            if name.startswith(prefix)
            and name != "quality_checks"
            and (value := getattr(self, name)) is not None
        }

    @property
    def max_body_bytes(self) -> int:
        """The whole request body may exceed the image by the multipart framing and fields."""
        return self.max_upload_bytes + 64 * 1024


@lru_cache
def get_settings() -> Settings:
    """The settings of this process, read from the environment once."""
    return Settings()  # type: ignore[call-arg]  # the fields come from SKIN_* variables
