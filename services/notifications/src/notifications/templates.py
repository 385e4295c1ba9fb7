"""What customers read: per-locale subject and body templates, keyed by template name.

Templates are ``string.Template`` texts; ``render`` fills in the order id, the customer's name, the
cancellation reason in words and money formatted with its currency. English subjects stay ASCII.
To add a language, add its texts to every table below and its tag to ``domain.SUPPORTED_LOCALES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from string import Template

from notifications.domain import resolve_locale


@dataclass(frozen=True)
class Rendered:
    template: str
    locale: str
    subject: str
    body: str


_EN_FRAME = "Dear $name,\n\n$text\n\nOrder number: $order_id\n\nThank you for shopping with us.\nOMS\n"
_ZH_FRAME = "$name，您好：\n\n$text\n\n订单号：$order_id\n\n感谢您的惠顾。\nOMS\n"

FRAMES: dict[str, str] = {"en": _EN_FRAME, "zh-CN": _ZH_FRAME}

# template name -> locale -> (subject, text); the text goes into the locale's frame.
TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "order.submitted": {
        "en": (
            "We received your order $order_id",
            "Thank you! We received your order and are checking it now. "
            "We will write again as soon as it is confirmed.",
        ),
        "zh-CN": (
            "我们已收到您的订单 $order_id",
            "感谢您的购买！我们已收到您的订单，正在审核。订单确认后我们会再通知您。",
        ),
    },
    "order.confirmed": {
        "en": (
            "Your order $order_id is confirmed",
            "Your order is confirmed and the items are reserved for you. We are now taking the payment.",
        ),
        "zh-CN": ("您的订单 $order_id 已确认", "您的订单已确认，商品已为您预留，我们正在处理付款。"),
    },
    "order.paid": {
        "en": (
            "Payment received for your order $order_id",
            "We received your payment. Your order will be prepared for shipping shortly.",
        ),
        "zh-CN": ("订单 $order_id 已付款成功", "我们已收到您的付款，您的订单即将备货发货。"),
    },
    "order.picking": {
        "en": (
            "We are preparing your order $order_id",
            "Your order is being picked and packed at our warehouse.",
        ),
        "zh-CN": ("您的订单 $order_id 正在备货", "您的订单正在仓库拣货打包。"),
    },
    "order.shipped": {
        "en": ("Your order $order_id has shipped", "Your order has been handed to the carrier."),
        "zh-CN": ("您的订单 $order_id 已发货", "您的订单已交给承运商。"),
    },
    "order.in_transit": {
        "en": ("Your order $order_id is on its way", "Your parcel is on its way to you."),
        "zh-CN": ("您的订单 $order_id 正在运输途中", "您的包裹正在运输途中。"),
    },
    "order.delivered": {
        "en": (
            "Your order $order_id has been delivered",
            "Your parcel has been delivered. We hope you enjoy your purchase!",
        ),
        "zh-CN": ("您的订单 $order_id 已送达", "您的包裹已送达，祝您购物愉快！"),
    },
    "order.cancelled": {
        "en": (
            "Your order $order_id has been cancelled",
            "We are sorry: your order has been cancelled because $reason. "
            "If you were charged, the full amount will be refunded.",
        ),
        "zh-CN": (
            "您的订单 $order_id 已取消",
            "很抱歉，您的订单已取消，原因：$reason。如已付款，款项将全额退还。",
        ),
    },
    "order.return_requested": {
        "en": (
            "We received your return request for order $order_id",
            "We received your return request. We will refund you as soon as the parcel is back with us.",
        ),
        "zh-CN": (
            "我们已收到订单 $order_id 的退货申请",
            "我们已收到您的退货申请，包裹退回后我们将为您退款。",
        ),
    },
    "order.returned": {
        "en": (
            "Your return for order $order_id is complete",
            "Your parcel is back with us and your return is complete. Your refund is on its way.",
        ),
        "zh-CN": ("订单 $order_id 的退货已完成", "您退回的包裹已收到，退货已完成，退款正在处理中。"),
    },
    "parcel.shipped": {
        "en": (
            "Your parcel $tracking_number is on its way",
            "A parcel of your order left our warehouse with $carrier.\n"
            "Tracking number: $tracking_number\nTrack it: $tracking_url\nExpected delivery: $eta",
        ),
        "zh-CN": (
            "您的包裹 $tracking_number 已发出",
            "您订单中的一个包裹已由$carrier揽收。\n运单号：$tracking_number\n查询物流：$tracking_url\n预计送达：$eta",
        ),
    },
    "parcel.exception": {
        "en": (
            "We could not deliver your parcel $tracking_number today",
            "$carrier could not deliver your parcel $tracking_number today and will try again.\n"
            "Track it: $tracking_url\nExpected delivery now: $eta",
        ),
        "zh-CN": (
            "包裹 $tracking_number 今日未能投递",
            "$carrier今日未能投递您的包裹 $tracking_number，将再次尝试投递。\n"
            "查询物流：$tracking_url\n最新预计送达：$eta",
        ),
    },
    "parcel.not_delivered": {
        "en": (
            "Your parcel $tracking_number could not be delivered",
            "We are sorry: $carrier could not deliver your parcel $tracking_number. "
            "We will refund what it held to your original payment method.",
        ),
        "zh-CN": (
            "您的包裹 $tracking_number 未能送达",
            "很抱歉，$carrier未能将您的包裹 $tracking_number 送达。我们会将该包裹内商品的款项退还至您的原支付方式。",
        ),
    },
    "payment.action_required": {
        "en": (
            "Please pay $amount for your order $order_id",
            "Your items are reserved for you. Please pay $amount before $expires_at "
            "(scan or open this link): $url",
        ),
        "zh-CN": (
            "请支付订单 $order_id 的 $amount",
            "商品已为您预留，请在 $expires_at 之前完成支付 $amount（扫码或打开链接）：$url",
        ),
    },
    "parcel.lost": {
        "en": (
            "Your parcel $tracking_number was lost",
            "We are sorry: $carrier lost your parcel $tracking_number. We will send what it held again "
            "if we have it in stock, or else refund it to your original payment method; "
            "we will write to you again to tell you which.",
        ),
        "zh-CN": (
            "您的包裹 $tracking_number 已丢失",
            "很抱歉，$carrier丢失了您的包裹 $tracking_number。如有库存，我们将重新发出包裹内的商品；"
            "否则将款项退还至您的原支付方式。我们会再次通知您处理结果。",
        ),
    },
    "parcel.sent_again": {
        "en": (
            "We sent your lost parcel $replaces again: $tracking_number",
            "What your lost parcel $replaces held is on its way again with $carrier.\n"
            "Tracking number: $tracking_number\nTrack it: $tracking_url\nExpected delivery: $eta",
        ),
        "zh-CN": (
            "已重新发出丢失的包裹 $replaces：$tracking_number",
            "您丢失的包裹 $replaces 内的商品已由$carrier重新揽收。\n运单号：$tracking_number\n"
            "查询物流：$tracking_url\n预计送达：$eta",
        ),
    },
    "payment.refunded": {
        "en": (
            "We refunded $amount for your order $order_id",
            "We refunded $amount to your original payment method. "
            "It may take a few days to appear on your statement.",
        ),
        "zh-CN": (
            "订单 $order_id 已退款 $amount",
            "我们已将 $amount 退还至您的原支付方式，到账可能需要几个工作日。",
        ),
    },
}

# Cancellation reasons (CONTRACT §5) in words; the English ones follow "because".
REASONS: dict[str, dict[str, str]] = {
    "out_of_stock": {"en": "an item in it is out of stock", "zh-CN": "商品库存不足"},
    "payment_declined": {"en": "the payment was declined", "zh-CN": "支付被拒绝"},
    "payment_timeout": {"en": "the payment was not confirmed in time", "zh-CN": "支付未能按时确认"},
    "shipment_failed": {
        "en": "no carrier can deliver to the shipping address",
        "zh-CN": "收货地址暂无承运商可以配送",
    },
    "customer_request": {"en": "you asked us to cancel it", "zh-CN": "应您的要求取消"},
    "saga_timeout": {"en": "it could not be processed in time", "zh-CN": "订单未能按时处理完成"},
    "delivery_failed": {"en": "the carrier could not deliver it", "zh-CN": "承运商未能送达"},
}
UNKNOWN_REASON = {"en": "we could not complete it", "zh-CN": "订单无法完成"}

_MINOR_UNITS = {
    "JPY": 0,
    "KRW": 0,
    "VND": 0,
    "CLP": 0,
    "ISK": 0,
    "BHD": 3,
    "KWD": 3,
    "JOD": 3,
    "OMR": 3,
    "TND": 3,
}
_ZH_SYMBOLS = {"CNY": "¥"}


def format_money(amount: Decimal, currency: str, locale: str) -> str:
    """``Decimal("1234.5"), "USD", "en"`` → ``USD 1,234.50``; ``"CNY", "zh-CN"`` → ``¥1,234.50``."""
    places = _MINOR_UNITS.get(currency, 2)
    quantum = Decimal(1).scaleb(-places)
    number = f"{Decimal(amount).quantize(quantum, rounding=ROUND_HALF_EVEN):,.{places}f}"
    symbol = _ZH_SYMBOLS.get(currency) if resolve_locale(locale) == "zh-CN" else None
    return f"{symbol}{number}" if symbol else f"{currency} {number}"


def reason_in_words(reason: str | None, locale: str) -> str:
    locale = resolve_locale(locale)
    return REASONS.get(reason or "", UNKNOWN_REASON)[locale]


def render(
    template: str,
    locale: str | None,
    *,
    order_id: str,
    name: str,
    reason: str | None = None,
    amount: Decimal | None = None,
    currency: str | None = None,
    **parcel: str,
) -> Rendered:
    """The subject and body of ``template`` in ``locale`` (or the nearest supported one)."""
    texts = TEMPLATES[template]
    resolved = resolve_locale(locale)
    subject, text = texts[resolved]
    values = {
        "order_id": order_id,
        "name": name,
        "reason": reason_in_words(reason, resolved),
        "amount": format_money(amount, currency or "", resolved) if amount is not None else "",
        **parcel,  # a parcel's messages: carrier, tracking_number, tracking_url, eta
    }
    body_text = Template(text).substitute(values)
    return Rendered(
        template=template,
        locale=resolved,
        subject=Template(subject).substitute(values),
        body=Template(FRAMES[resolved]).substitute({**values, "text": body_text}),
    )
