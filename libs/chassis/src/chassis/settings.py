"""The settings every service shares; each service subclasses with its own ``env_prefix``.

``AMQP_URL``, ``DATABASE_URL``, ``API_KEYS``, ``OMS_ENV``, ``LOG_JSON``, ``DEAD_LETTER_KEY`` and
``DEAD_LETTER_RETENTION_DAYS`` may also be given without the service prefix; the prefixed name wins.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from chassis.keys import DEV_HASHES, DEV_KEYS, ApiKey, Role, parse_all
from chassis.tls import with_amqp_tls, with_database_tls

__all__ = ["ApiKey", "Role", "ServiceSettings"]

_UNPREFIXED = {
    "amqp_url": "AMQP_URL",
    "database_url": "DATABASE_URL",
    "api_keys": "API_KEYS",
    "environment": "OMS_ENV",
    "log_json": "LOG_JSON",
    "max_body_bytes": "MAX_BODY_BYTES",
    "database_sslmode": "DATABASE_SSLMODE",
    "database_ssl_ca": "DATABASE_SSL_CA",
    "database_ssl_cert": "DATABASE_SSL_CERT",
    "database_ssl_key": "DATABASE_SSL_KEY",
    "amqp_ssl_ca": "AMQP_SSL_CA",
    "amqp_ssl_cert": "AMQP_SSL_CERT",
    "amqp_ssl_key": "AMQP_SSL_KEY",
    "fault_fail_commit_rate": "OMS_FAULT_FAIL_COMMIT_RATE",
    "dead_letter_key": "DEAD_LETTER_KEY",
    "dead_letter_retention_days": "DEAD_LETTER_RETENTION_DAYS",
    "declare_topology": "OMS_DECLARE_TOPOLOGY",
    "unrouted_tap": "OMS_UNROUTED_TAP",
}

DEV_DEAD_LETTER_KEY = "b21zLWRldi1kZWFkLWxldHRlci1rZXktMzItYnl0ZXM="
"""Seals parked dead letters in local and test runs only (a Fernet key: 32 bytes, URL-safe base64)."""


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    service: str = "service"
    environment: Literal["local", "test", "production"] = "local"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    database_url: str = ""
    database_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
        None
    )
    database_ssl_ca: str | None = None
    database_ssl_cert: str | None = None
    database_ssl_key: str | None = None
    """PostgreSQL TLS (libpq's sslmode, sslrootcert, sslcert, sslkey), added to DATABASE_URL (chassis.tls)."""
    amqp_ssl_ca: str | None = None
    amqp_ssl_cert: str | None = None
    amqp_ssl_key: str | None = None
    """RabbitMQ TLS for an amqps:// AMQP_URL: the CA and a client certificate (chassis.tls)."""
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    api_keys: Annotated[tuple[ApiKey, ...], NoDecode] = DEV_KEYS
    """``name:role:sha256`` entries (chassis.keys); the dev-* keys unless configured."""
    log_json: bool = False
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    """A request body larger than this is refused with 413 (chassis.web.LimitBody)."""
    log_level: str = "INFO"
    prefetch: int = 32
    batch_size: int = Field(default=32, ge=1)
    """Messages handled in one database transaction at most (chassis.batch); 1 handles each alone."""
    batch_linger_ms: float = Field(default=2.0, ge=0)
    """How long a batch waits for more messages to arrive before it starts."""
    outbox_batch: int = 200
    outbox_poll_seconds: float = 1.0
    inbox_retention_days: float = Field(default=7.0, gt=0)
    """How long handled message ids are kept for de-duplication (``chassis.inbox``)."""
    dead_letter_key: SecretStr | None = None
    """Fernet key(s) sealing the original of a parked dead letter, comma-separated: the first seals,
    any opens (rotation). Unset, a dev key in local and test runs; in production the service that
    parks dead letters refuses to start without it (``chassis.deadletters.housekeeping``)."""
    dead_letter_retention_days: float = Field(default=30.0, gt=0)
    """How long dead letters are kept, parked or resolved (``chassis.deadletters``)."""
    fault_fail_commit_rate: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Fault injection for the resilience tests only (OMS_FAULT_FAIL_COMMIT_RATE)."""
    unrouted_tap: bool = False
    """Keep the events no queue subscribes to in ``oms.events.unrouted``, to debug (events.topology);
    off, the broker drops them."""
    declare_topology: bool = True
    """Declare the exchanges and queues at start (``events.topology``). Off where the broker's
    topology is declared for the services and their users may not declare it (deploy/k8s)."""

    @model_validator(mode="before")
    @classmethod
    def _unprefixed(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for field, env in _UNPREFIXED.items():
                if field not in values and env in os.environ:
                    values[field] = os.environ[env]
        return values

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> tuple[ApiKey, ...]:
        return parse_all(value)

    @model_validator(mode="after")
    def _safe(self) -> ServiceSettings:
        if not self.database_url:
            var = os.environ.get("OMS_VAR_DIR", ".var")
            self.database_url = f"sqlite+aiosqlite:///{var}/{self.service}.db"
        self.database_url = with_database_tls(
            self.database_url,
            sslmode=self.database_sslmode,
            ca=self.database_ssl_ca,
            cert=self.database_ssl_cert,
            key=self.database_ssl_key,
        )
        self.amqp_url = with_amqp_tls(
            self.amqp_url, ca=self.amqp_ssl_ca, cert=self.amqp_ssl_cert, key=self.amqp_ssl_key
        )
        if self.environment == "production":
            if any(k.sha256 in DEV_HASHES for k in self.api_keys):
                raise ValueError("the dev-* API keys must not be used in production: set API_KEYS")
            if self.fault_fail_commit_rate:
                raise ValueError("fault injection must not be switched on in production")
            if "guest:guest@" in self.amqp_url:
                raise ValueError("the guest broker account must not be used in production: set AMQP_URL")
            if self.dead_letter_key is not None and DEV_DEAD_LETTER_KEY in self.dead_letter_keys():
                raise ValueError(
                    "the dev dead-letter key must not be used in production: set DEAD_LETTER_KEY"
                )
        from cryptography.fernet import Fernet

        try:
            for key in self.dead_letter_keys():
                Fernet(key)
        except ValueError:
            raise ValueError(
                "DEAD_LETTER_KEY: each key must be 32 bytes in URL-safe base64 (a Fernet key)"
            ) from None
        return self

    def dead_letter_keys(self) -> list[str]:
        if self.dead_letter_key is None:
            return [DEV_DEAD_LETTER_KEY] if self.environment != "production" else []
        return [k.strip() for k in self.dead_letter_key.get_secret_value().split(",") if k.strip()]
