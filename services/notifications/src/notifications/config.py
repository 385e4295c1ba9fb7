from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from chassis.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFICATIONS_", extra="ignore")

    service: str = "notifications"
    http_port: int = 8004

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_timeout: float = 10.0
    """Seconds for one SMTP conversation (connect, send, quit) before it counts as a transient failure."""
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    mail_from: str = "OMS <orders@oms.local>"
    sms_url: str | None = None
    """The SMS provider's API (Twilio-shaped); None: this service's own stand-in (local runs, tests)."""
    sms_account_sid: str = "AC-dev"
    sms_auth_token: SecretStr = SecretStr("dev-sms-token")
    sms_from: str = "+10000000000"
    fcm_url: str | None = None
    """Firebase Cloud Messaging's HTTP v1 API (https://fcm.googleapis.com); None: the stand-in."""
    fcm_project_id: str = "oms-dev"
    fcm_access_token: SecretStr = SecretStr("dev-fcm-token")
    """An OAuth 2 access token for FCM (minted from the service account by the deployment)."""
    provider_timeout: float = Field(default=10.0, gt=0)
    retention_days: float = Field(default=180.0, gt=0)
    """How long an order's notifications and its recipient's contact details are kept."""

    send_lease_seconds: float = 15.0
    """How long a handler owns a pending notification while it sends it. Another delivery of the same
    event waits (is retried) until then, so two consumers never send one notification at the same time;
    after a crash the redelivered event sends it once the lease has run out. Keep it above smtp_timeout,
    and well below the ~30 s a message spends in retries before it is dead-lettered."""

    @model_validator(mode="after")
    def _real_providers_in_production(self) -> Settings:
        if self.environment == "production":
            if not self.sms_url or not self.fcm_url:
                raise ValueError(
                    "production needs real SMS and push providers: set NOTIFICATIONS_SMS_URL and NOTIFICATIONS_FCM_URL"
                )
            if (
                self.sms_auth_token.get_secret_value() == "dev-sms-token"
                or self.fcm_access_token.get_secret_value() == "dev-fcm-token"
            ):
                raise ValueError("the stand-ins' dev credentials must not be used in production")
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_send(self) -> Settings:
        if self.send_lease_seconds <= self.smtp_timeout:
            raise ValueError("send_lease_seconds must be greater than smtp_timeout")
        return self
