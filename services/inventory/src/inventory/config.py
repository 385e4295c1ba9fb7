from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from chassis.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTORY_", extra="ignore")

    service: str = "inventory"
    http_port: int = 8001
    default_low_stock_threshold: int = 5
    default_reorder_quantity: int = 50
