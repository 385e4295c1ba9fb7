from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from chassis.settings import ServiceSettings

DEV_CARRIER_SECRET = "dev-carrier-secret"


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SHIPPING_", extra="ignore")

    service: str = "shipping"
    http_port: int = 8003
    retention_days: float = Field(default=180.0, gt=0)
    """A closed parcel's name and street are blanked this long after it closed (shipping.retention)."""
    carrier_simulation: bool = True
    """Local runs: a simulated carrier walks every parcel to delivered by itself."""
    simulation_step_seconds: float = Field(default=1.0, gt=0)
    carrier_secret: str = DEV_CARRIER_SECRET
    """The secret that signs a carrier's callbacks when ``carrier_secrets`` names none for it."""
    carrier_secrets: dict[str, str] = Field(default_factory=dict)
    """Per carrier code (``SHIPPING_CARRIER_SECRETS='{"dhl": "..."}'``)."""
    signature_window_seconds: float = Field(default=300.0, gt=0)
    """A callback signed longer ago (or later) than this is refused: a replayed capture is stale."""

    @model_validator(mode="after")
    def _safe_secrets(self) -> Settings:
        if self.environment == "production":
            if self.carrier_simulation:
                raise ValueError(
                    "the simulated carrier must not run in production: SHIPPING_CARRIER_SIMULATION=false"
                )
            if DEV_CARRIER_SECRET in (self.carrier_secret, *self.carrier_secrets.values()):
                raise ValueError(
                    "the dev carrier secret must not be used in production: set SHIPPING_CARRIER_SECRET(S)"
                )
        return self
