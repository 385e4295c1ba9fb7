"""Which adapter takes which payment: the configured providers by name, and the rule that picks one.

A card's token is captured by the card processor: ``stripe`` when it is configured, else the
in-process ``sandbox``. A wallet method (Alipay, WeChat Pay, PayPal) always goes to its own
provider: with a token (the customer's saved agreement) it is captured there at once; without one
(or with the sandbox's ``tok_nopay``: the customer who never pays) the customer pays it there. A
method whose provider is not configured has no adapter: such a payment fails
``method_unavailable``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from payments.adapters.base import Adapter

NOPAY = "tok_nopay"
CUSTOMER_PAYS = {"alipay": "alipay", "wechat_pay": "wechat_pay", "paypal": "paypal"}  # method -> provider
SANDBOX = "sandbox"


@dataclass
class Providers:
    adapters: dict[str, Adapter] = field(default_factory=dict)

    @classmethod
    def of(cls, *adapters: Adapter) -> Providers:
        return cls({a.name: a for a in adapters})

    @property
    def card_processor(self) -> str:
        return "stripe" if "stripe" in self.adapters else SANDBOX

    def get(self, name: str | None) -> Adapter | None:
        return self.adapters.get(name or SANDBOX)

    @staticmethod
    def customer_pays(method: str, token: str | None) -> bool:
        return method in CUSTOMER_PAYS and (not token or token == NOPAY)

    def name_for(self, method: str, token: str | None) -> str:
        return CUSTOMER_PAYS.get(method) or self.card_processor

    async def aclose(self) -> None:
        for adapter in self.adapters.values():
            close = getattr(adapter, "aclose", None)
            if close is not None:
                await close()
