from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from events.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PAYMENTS_", extra="ignore")

    service: str = "payments"
    http_port: int = 8002
    provider_attempts: int = 4
    """Tries of one capture or refund at the provider before a transient failure becomes a failure."""
    provider_retry_base_seconds: float = 0.05
    provider_timeout_seconds: float = 30.0
    """How long the provider may take to answer one call; ``tok_slow`` never answers."""
    late_capture_seconds: float = 15.0
    """``tok_late`` answers, with a capture, after this long (past the saga's payment deadline)."""
