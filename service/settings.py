"""Service settings: one pydantic-settings class, read from ``PYTHIA_*`` environment variables
(and command-line flags of ``python -m service``), validated once at start. The HTTP app and
the Celery worker read the same class.

Variables (defaults in brackets):

* ``PYTHIA_MODELS`` release directories, comma-separated or a JSON list; ``name=path`` names
  a model, else it is named after its directory (``runs/demo/release`` -> ``demo``) [none]
* ``PYTHIA_DEVICE`` auto | cpu | cuda | cuda:N [auto]
* ``PYTHIA_MAX_BATCH_SIZE`` the largest batch the engine forms [32]
* ``PYTHIA_MAX_WAIT_MS`` upper bound on how long a batch waits for announced items [5]
* ``PYTHIA_QUEUE_SIZE`` queued requests per model before 429 [256]
* ``PYTHIA_REQUEST_TIMEOUT_S`` per-request deadline, queue + inference, before 504 [30]
* ``PYTHIA_QUEUE`` local (the in-process engine) | celery (GPU workers behind Redis) [local]
* ``PYTHIA_REDIS_URL`` Celery broker and result backend [redis://127.0.0.1:6379/0]
* ``PYTHIA_DATA_ROOT`` where batch-prediction jobs may read datasets from [./data]
* ``PYTHIA_API_KEY`` if set, required as ``Authorization: Bearer KEY`` or ``X-API-Key`` [none]
* ``PYTHIA_MAX_UPLOAD_BYTES`` the largest accepted image upload [10 MiB]
* ``PYTHIA_MAX_IMAGE_PIXELS`` the largest decoded image, width x height [40,000,000]
* ``PYTHIA_MAX_QUESTION_CHARS`` the longest accepted question [500]
* ``PYTHIA_DECODE_THREADS`` threads decoding uploads off the event loop [4]
* ``PYTHIA_CORS_ORIGINS`` origins allowed to call the API from a browser, comma-separated
  (``*`` for any); CORS is off when empty [empty]
* ``PYTHIA_RATE_LIMIT`` requests per client (API key, else address) on the inference routes
  and ``POST /jobs``, e.g. ``120/minute``; over it, 429 with Retry-After [no limit]
* ``PYTHIA_HOST`` / ``PYTHIA_PORT`` where ``python -m service`` listens [127.0.0.1 / 8000]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["ModelSpec", "Settings", "parse_model_specs", "parse_rate"]


class ModelSpec:
    """One ``PYTHIA_MODELS`` entry: ``name=path`` or ``path``."""

    __slots__ = ("name", "path")

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path

    def __repr__(self) -> str:
        return f"ModelSpec({self.name!r}, {str(self.path)!r})"


def parse_model_specs(entries: list[str]) -> list[ModelSpec]:
    """``["demo=runs/x/release", "runs/y/release"]`` -> specs; ValueError on a bad or
    repeated name. Names are what requests send as ``model``."""
    specs: list[ModelSpec] = []
    for raw in entries:
        text = raw.strip()
        if not text:
            continue
        name, sep, path = text.partition("=")
        if not sep:
            path = text
            name = Path(text.rstrip("/")).name
            if name == "release":  # runs/<run>/release -> <run>
                name = Path(text.rstrip("/")).parent.name or name
        name = name.strip()
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"model name {name!r} (from {raw!r}) must be letters, digits, "
                             "'-', '_' or '.'")
        if any(s.name == name for s in specs):
            raise ValueError(f"model name {name!r} is given twice; name them: name=path")
        specs.append(ModelSpec(name, Path(path.strip())))
    return specs


PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


def parse_rate(text: str) -> tuple[int, float]:
    """``"120/minute"`` -> (120 requests, 60.0 seconds); ValueError naming the format."""
    count, sep, period = text.strip().partition("/")
    try:
        n = int(count)
    except ValueError:
        n = 0
    if not sep or n < 1 or period.strip().rstrip("s") not in PERIODS:
        raise ValueError(f"rate_limit {text!r}: expected N/second, N/minute or N/hour")
    return n, PERIODS[period.strip().rstrip("s")]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PYTHIA_", extra="ignore")

    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    device: str = "auto"
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_wait_ms: float = Field(default=5.0, ge=0, le=10_000)
    queue_size: int = Field(default=256, ge=1, le=1_000_000)
    request_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    queue: Literal["local", "celery"] = "local"
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_root: Path = Path("./data")
    api_key: SecretStr | None = None
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=64 * 64)
    max_question_chars: int = Field(default=500, ge=1, le=100_000)
    decode_threads: int = Field(default=4, ge=1, le=256)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    rate_limit: str | None = None  # per client on the inference routes, e.g. "120/minute"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        """A comma-separated string or a JSON list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"PYTHIA_MODELS is not a valid JSON list: {exc}") from None
            else:
                value = [p for p in text.split(",") if p.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_rate(value)
        return value.strip()

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        v = value.strip()
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None or not value.get_secret_value() else value

    def model_specs(self) -> list[ModelSpec]:
        return parse_model_specs(self.models)
