from __future__ import annotations

import limits
from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from chassis.settings import ServiceSettings
from orders.saga import Timeouts


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERS_", extra="ignore")

    service: str = "orders"
    http_port: int = 8000
    step_timeout_seconds: float = Field(default=30.0, gt=0)
    """How long a step or a compensation waits for its answer before its command is sent again."""
    saga_warning_seconds: float = Field(default=1200.0, gt=0)
    """A step that has waited this long is shown to ops (dashboard, oms_saga_warnings_total)."""
    saga_timeout_seconds: float = Field(default=1800.0, gt=0)
    """A step that has waited this long is cancelled with saga_timeout (a compensation, or a lost
    parcel sent again: attention)."""
    deadline_poll_seconds: float = Field(default=0.5, gt=0)
    max_quantity_per_line: int = Field(default=100, gt=0)
    idempotency_abandoned_seconds: float = 30.0
    """A request still "in progress" after this long died half-way; its key may be used again."""
    stuck_after_seconds: float = 300.0
    parcel_stuck_after_seconds: float = Field(default=172800.0, gt=0)
    """A parcel in one carrier status (created, exception, in transit, ...) longer than this puts its
    order on the dashboard's stuck list."""
    admission_max_wait_seconds: float = Field(default=5.0, ge=0)
    """New orders are refused (503) while the orders in flight would take longer than this to be
    paid at the recent pace (orders.admission); 0 turns the check off."""
    admission_min_in_flight: int = Field(default=50, ge=1)
    """The door never closes while fewer orders than this are in flight."""
    retention_days: float = Field(default=180.0, gt=0)
    """A closed order's contact details are blanked this long after it closed, and dead letters
    parked this long ago deleted (orders.retention)."""
    inventory_url: str = "http://127.0.0.1:8001"
    ops_api_key: str = "dev-ops-key"
    """The key the dashboard uses to read low stock from inventory."""
    payments_url: str = "http://127.0.0.1:8002"
    admin_api_key: str = "dev-admin-key"
    """The key the console uses on payments and inventory for an admin's refunds, stock receipts
    and counts (the admin who acts is named in the reason they carry)."""
    console_secret: str = ""
    """Signs the console's session cookies; required in production (32 characters or more). Local
    runs and tests use a fixed development secret, so every replica reads every session."""
    console_session_minutes: float = Field(default=480, gt=0)
    """A console session ends this long after sign-in."""
    console_sign_in_failures: str = "5/15 minutes"
    """Failed console sign-ins a client address may make in that window (moving); then ``429``
    until the oldest failure leaves it. Counted by each replica for itself."""

    @field_validator("console_sign_in_failures")
    @classmethod
    def _failures_rule(cls, value: str) -> str:
        limits.parse(value)  # "N/period": a ValueError names a rule it cannot read
        return value

    @model_validator(mode="after")
    def _console_secret(self) -> Settings:
        if self.environment == "production" and len(self.console_secret) < 32:
            raise ValueError("set ORDERS_CONSOLE_SECRET (32 characters or more) to sign console sessions")
        return self

    @property
    def session_secret(self) -> str:
        return self.console_secret or "dev-console-secret"

    @model_validator(mode="after")
    def _warning_first(self) -> Settings:
        if self.saga_warning_seconds >= self.saga_timeout_seconds:
            raise ValueError("ORDERS_SAGA_WARNING_SECONDS must be shorter than ORDERS_SAGA_TIMEOUT_SECONDS")
        return self

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(
            resend_seconds=self.step_timeout_seconds,
            warn_seconds=self.saga_warning_seconds,
            give_up_seconds=self.saga_timeout_seconds,
        )
