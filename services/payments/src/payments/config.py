from __future__ import annotations

import os

from pydantic import model_validator
from pydantic_settings import SettingsConfigDict

from events.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PAYMENTS_", extra="ignore")

    service: str = "payments"
    http_port: int = 8002
    provider_attempts: int = 4
    """Tries of one capture or refund at the provider before a transient failure becomes a failure."""
    provider_retry_base_seconds: float = 0.05
    provider_timeout_seconds: float = 10.0
    """How long the provider may take to answer one call; ``tok_slow`` never answers. Then the
    attempt is looked up by its key and, when the provider never completed it, voided and failed
    (``provider_timeout``)."""
    late_capture_seconds: float = 15.0
    """``tok_late`` answers, with a capture, after this long."""
    sandbox_ledger: str = ""
    """The sandbox provider's own ledger (a SQLite file; default ``$OMS_VAR_DIR/payments-provider.db``)."""
    fault_crash_after_charge_file: str = ""
    """Fault injection for the tests only: when this file exists, the process removes it and dies
    between the provider's charge and its commit."""

    @model_validator(mode="after")
    def _payments_safe(self) -> Settings:
        if not self.sandbox_ledger:
            self.sandbox_ledger = os.path.join(os.environ.get("OMS_VAR_DIR", ".var"), "payments-provider.db")
        if self.environment == "production" and self.fault_crash_after_charge_file:
            raise ValueError("fault injection must not be switched on in production")
        return self
