"""SMS and push through their providers' HTTP APIs, and the local stand-ins that play them.

``HttpSms`` speaks a Twilio-shaped SMS API (``POST /2010-04-01/Accounts/{sid}/Messages.json``,
form fields ``To``, ``From``, ``Body``, HTTP basic auth with the account id and token; the answer's
``sid`` is the reference). ``FcmPush`` speaks Firebase Cloud Messaging's HTTP v1 API (``POST
/v1/projects/{project}/messages:send`` with a bearer token and ``{"message": {"token", "notification":
{"title", "body"}}}``; the answer's ``name`` is the reference). The address of a push is the
device (or, here, the customer's account) token.

In local runs and tests the notifications service itself serves stand-ins of both APIs under
``/sandbox/`` (``standins``): they check what a provider checks (credentials, the fields, a phone
number in E.164) and keep what they were sent, so the same adapter code runs as against the real
provider. Production mounts no stand-in and refuses settings that point at one.

Provider errors map as the e-mail's do: a refusal of the message itself (400, 404) is
:class:`Rejected`; the provider busy or down (429, 5xx, no connection) or our credentials refused
(401, 403) is :class:`Transient`. The
reason is a status code, never the address.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Form, Header, HTTPException, Request

from notifications.channels import Outgoing, Rejected, Transient
from notifications.config import Settings
from notifications.domain import Channel

SMS_LIMIT = 1600  # characters a provider takes in one (multi-part) SMS


def _raise_for(response: httpx.Response, provider: str) -> None:
    if response.status_code < 300:
        return
    # busy, down, or our credentials refused (ours to fix, not the message's): the same send may work later
    if response.status_code in (401, 403, 429) or response.status_code >= 500:
        raise Transient(f"{provider}_{response.status_code}")
    raise Rejected(f"{provider}_{response.status_code}")


class _Http:
    def __init__(self, base_url: str, timeout: float, transport: httpx.AsyncBaseTransport | None) -> None:
        self.base_url, self.timeout, self._transport = base_url.rstrip("/"), timeout, transport

    async def _post(self, provider: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            async with httpx.AsyncClient(
                base_url=self.base_url, timeout=self.timeout, transport=self._transport
            ) as client:
                response = await client.post(path, **kwargs)
        except httpx.HTTPError as exc:
            raise Transient(f"{provider}_{type(exc).__name__}") from None
        _raise_for(response, provider)
        return response

    def close(self) -> None:
        pass  # a client per message: nothing kept open


class HttpSms(_Http):
    channel = Channel.SMS.value

    def __init__(
        self,
        *,
        base_url: str,
        account_sid: str,
        auth_token: str,
        sender: str,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout, transport)
        self.account_sid, self._token, self.sender = account_sid, auth_token, sender

    async def send(self, message: Outgoing) -> str:
        body = f"{message.subject}\n{message.body}"[:SMS_LIMIT]
        response = await self._post(
            "sms",
            f"/2010-04-01/Accounts/{self.account_sid}/Messages.json",
            data={"To": message.address, "From": self.sender, "Body": body},
            auth=(self.account_sid, self._token),
        )
        return str(response.json()["sid"])


class FcmPush(_Http):
    channel = Channel.PUSH.value

    def __init__(
        self,
        *,
        base_url: str,
        project_id: str,
        access_token: str,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout, transport)
        self.project_id, self._token = project_id, access_token

    async def send(self, message: Outgoing) -> str:
        payload = {
            "message": {
                "token": message.address,
                "notification": {"title": message.subject, "body": message.body[:4000]},
            }
        }
        response = await self._post(
            "fcm",
            f"/v1/projects/{self.project_id}/messages:send",
            json=payload,
            headers={"Authorization": f"Bearer {self._token}"},
        )
        return str(response.json()["name"])


# --- the stand-ins of local runs and tests --------------------------------------------------------

E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class Standins:
    """What the stand-ins were sent, newest last (local runs and tests read it back)."""

    def __init__(
        self, *, sms_account_sid: str, sms_auth_token: str, fcm_project_id: str, fcm_access_token: str
    ) -> None:
        self.sms_credentials = (sms_account_sid, sms_auth_token)
        self.fcm_project, self.fcm_token = fcm_project_id, fcm_access_token
        self.sms: list[dict[str, str]] = []
        self.push: list[dict[str, Any]] = []


def standins_router(standins: Standins) -> APIRouter:
    router = APIRouter(prefix="/sandbox", tags=["sandbox"], include_in_schema=False)

    @router.post("/sms/2010-04-01/Accounts/{sid}/Messages.json", status_code=201)
    async def sms(
        sid: str,
        request: Request,
        To: Annotated[str, Form()],
        From: Annotated[str, Form()],  # noqa: N803
        Body: Annotated[str, Form()],
    ) -> dict[str, Any]:  # noqa: N803
        auth = request.headers.get("authorization", "")
        expected = "Basic " + base64.b64encode(":".join(standins.sms_credentials).encode()).decode()
        if sid != standins.sms_credentials[0] or auth != expected:
            raise HTTPException(401, {"code": 20003, "message": "Authenticate"})
        if not E164.match(To):
            raise HTTPException(400, {"code": 21211, "message": "Invalid 'To' Phone Number"})
        if not Body or len(Body) > SMS_LIMIT:
            raise HTTPException(
                400, {"code": 21617, "message": "The concatenated message body exceeds the limit"}
            )
        message = {"sid": f"SM{uuid.uuid4().hex}", "to": To, "from": From, "body": Body, "status": "queued"}
        standins.sms.append(message)
        return message

    @router.post("/fcm/v1/projects/{project}/messages:send")
    async def fcm(
        project: str, payload: dict[str, Any], authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, str]:
        if authorization != f"Bearer {standins.fcm_token}":
            raise HTTPException(401, {"status": "UNAUTHENTICATED"})
        if project != standins.fcm_project:
            raise HTTPException(404, {"status": "NOT_FOUND"})
        message = payload.get("message") or {}
        if not message.get("token") or not (message.get("notification") or {}).get("title"):
            raise HTTPException(400, {"status": "INVALID_ARGUMENT"})
        name = f"projects/{project}/messages/{uuid.uuid4().int % 10**16}"
        standins.push.append({"name": name, **message})
        return {"name": name}

    return router


def adapters(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> dict[str, HttpSms | FcmPush]:
    """The SMS and push adapters the settings name: the stand-ins of this service unless configured."""
    here = f"http://{settings.http_host}:{settings.http_port}/sandbox"
    return {
        Channel.SMS.value: HttpSms(
            base_url=settings.sms_url or f"{here}/sms",
            account_sid=settings.sms_account_sid,
            auth_token=settings.sms_auth_token.get_secret_value(),
            sender=settings.sms_from,
            timeout=settings.provider_timeout,
            transport=transport,
        ),
        Channel.PUSH.value: FcmPush(
            base_url=settings.fcm_url or f"{here}/fcm",
            project_id=settings.fcm_project_id,
            access_token=settings.fcm_access_token.get_secret_value(),
            timeout=settings.provider_timeout,
            transport=transport,
        ),
    }


def standins(settings: Settings) -> Standins:
    return Standins(
        sms_account_sid=settings.sms_account_sid,
        sms_auth_token=settings.sms_auth_token.get_secret_value(),
        fcm_project_id=settings.fcm_project_id,
        fcm_access_token=settings.fcm_access_token.get_secret_value(),
    )
