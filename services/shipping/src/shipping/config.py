from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from events.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SHIPPING_", extra="ignore")

    service: str = "shipping"
    http_port: int = 8003
    retention_days: float = Field(default=180.0, gt=0)
    """A closed parcel's name and street are blanked this long after it closed (shipping.retention)."""
    carrier_simulation: bool = True
    """Local runs: a simulated carrier walks every parcel to delivered by itself."""
    simulation_step_seconds: float = Field(default=1.0, gt=0)
