"""Which adapter takes which payment: the configured providers by name, and the rule that picks one.

A token (a card, a saved wallet agreement) is captured by the card processor: ``stripe`` when it is
configured, else the in-process ``sandbox``;
a wallet method without a token (or with the sandbox's ``tok_nopay``: the customer who never pays)
is paid by the customer at that method's provider. A method whose provider is not configured has
no adapter: such a payment fails ``method_unavailable``.
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
        return CUSTOMER_PAYS[method] if self.customer_pays(method, token) else self.card_processor

    async def aclose(self) -> None:
        for adapter in self.adapters.values():
            close = getattr(adapter, "aclose", None)
            if close is not None:
                await close()
