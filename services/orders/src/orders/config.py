from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from events.settings import ServiceSettings
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
    """A step that has waited this long is cancelled with saga_timeout (a compensation: attention)."""
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
    inventory_url: str = "http://127.0.0.1:8001"
    ops_api_key: str = "dev-ops-key"
    """The key the dashboard uses to read low stock from inventory."""

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
