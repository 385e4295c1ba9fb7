"""The console's words in English and Chinese, chosen by the browser's ``Accept-Language``
(English by default). Templates write the English text; ``t("...")`` gives it in the page's
language."""

from __future__ import annotations

from collections.abc import Callable

ZH: dict[str, str] = {
    "OMS console": "OMS 运营控制台",
    "Dashboard": "仪表盘",
    "Orders": "订单",
    "Dead letters": "死信",
    "Stock": "库存",
    "Main": "主导航",
    "Skip to content": "跳到正文",
    "Signed in as": "当前登录",
    "API key": "API 密钥",
    "Sign in": "登录",
    "Sign out": "退出登录",
    "Sign in with an ops or admin API key.": "请使用运营（ops）或管理员（admin）API 密钥登录。",
    "Unknown API key.": "API 密钥无效。",
    "This key may not use the console.": "此密钥无权使用控制台。",
    "Forbidden": "禁止访问",
    "Only an admin may do this.": "只有管理员可以执行此操作。",
    "Your session has ended: sign in again.": "会话已结束，请重新登录。",
    "Orders by status": "各状态订单数",
    "Orders placed and paid per minute, last hour": "最近一小时每分钟下单与支付数",
    "POST to paid, seconds (mean and worst per minute), last hour": (
        "下单到支付耗时（秒，每分钟平均与最大），最近一小时"
    ),
    "placed": "下单",
    "paid": "已支付",
    "mean": "平均",
    "worst": "最大",
    "orders": "订单数",
    "Stuck (no move for a while, not with the carrier)": "停滞订单（长时间无进展，且不在承运商处）",
    "Needs attention": "需要处理",
    "Waiting long for an answer (saga_timeout comes next)": "久候未复（即将超时取消）",
    "waiting since": "等待自",
    "cancelled at": "取消于",
    "Messages": "消息",
    "dead letters parked": "已停放死信",
    "dead letters waiting": "等待中的死信",
    "events nobody subscribes to": "无人订阅的事件",
    "outbox backlog": "发件箱积压",
    "New orders (admission control)": "新订单（准入控制）",
    "door": "准入",
    "open": "开放",
    "closed: refusing with 503": "关闭：以 503 拒绝",
    "refused since start": "启动以来拒绝数",
    "Low stock": "低库存",
    "inventory unavailable": "库存服务不可用",
    "Payment providers disagree": "支付渠道对账不符",
    "payments unavailable": "支付服务不可用",
    "Provider": "渠道",
    "Ours": "本方记录",
    "Theirs": "渠道记录",
    "none": "无",
    "Updated": "更新于",
    "order": "订单",
    "status": "状态",
    "since": "起始",
    "why": "原因",
    "what": "项目",
    "count": "数量",
    "now": "当前",
    "Search orders": "搜索订单",
    "Order id, customer e-mail or phone, tracking number or SKU": "订单号、客户邮箱或电话、运单号或 SKU",
    "Search": "搜索",
    "Status": "状态",
    "Channel": "渠道",
    "From": "开始日期",
    "To": "结束日期",
    "any": "全部",
    "No orders found.": "未找到订单。",
    "Created": "创建时间",
    "Total": "金额",
    "Order": "订单",
    "Customer": "客户",
    "Shipping address": "收货地址",
    "Items": "商品",
    "SKU": "SKU",
    "Quantity": "数量",
    "Unit price": "单价",
    "Payment": "支付",
    "Method": "方式",
    "Amount": "金额",
    "Refunded": "已退款",
    "Refunds": "退款记录",
    "Shipment": "发货",
    "Carrier": "承运商",
    "Tracking number": "运单号",
    "Estimated delivery": "预计送达",
    "Tracking": "物流轨迹",
    "History": "历史",
    "At": "时间",
    "Reason": "原因",
    "By": "操作人",
    "Saga messages": "流程消息",
    "Message": "消息",
    "Sent": "已发送",
    "waiting": "等待中",
    "The outbox keeps sent messages for an hour.": "发件箱只保留最近一小时已发送的消息。",
    "Actions": "操作",
    "Cancel order": "取消订单",
    "Refund": "退款",
    "Change address": "修改地址",
    "Resolve": "标记已处理",
    "Confirm": "确认",
    "Close": "关闭",
    "Amount (empty: all that remains)": "金额（留空：全部剩余金额）",
    "Name": "姓名",
    "Line 1": "地址行 1",
    "Line 2": "地址行 2",
    "City": "城市",
    "Region": "省/州",
    "Postal code": "邮编",
    "Country": "国家",
    "Done": "完成",
    "Cancel requested.": "已请求取消。",
    "Refund requested.": "已请求退款。",
    "Address changed.": "地址已修改。",
    "Marked as handled.": "已标记为已处理。",
    "No such order.": "没有此订单。",
    "Queue": "队列",
    "Type": "类型",
    "Deliveries": "投递次数",
    "Died": "失败时间",
    "Body (personal data and tokens masked)": "消息内容（个人信息和令牌已隐藏）",
    "Replay": "重放",
    "Discard": "丢弃",
    "No dead letters parked.": "没有停放的死信。",
    "Replayed.": "已重放。",
    "Discarded.": "已丢弃。",
    "Warehouse": "仓库",
    "On hand": "在库",
    "Reserved": "已预留",
    "Available": "可用",
    "Threshold": "阈值",
    "Reorder": "建议补货",
    "Look up a SKU": "查询 SKU",
    "Show": "查看",
    "Unknown SKU.": "未知 SKU。",
    "Receive stock": "入库",
    "Count stock": "盘点",
    "Counted on hand": "盘点在库数",
    "Stock received.": "已入库。",
    "Count recorded.": "已记录盘点。",
}


def language(accept_language: str | None) -> str:
    """``zh`` when the browser prefers Chinese to English, else ``en``."""
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        ranked.append((-q, i, tag.strip().lower()))
    for _q, _i, tag in sorted(ranked):
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en") or tag == "*":
            return "en"
    return "en"


def translator(lang: str) -> Callable[[str], str]:
    if lang == "zh":
        return lambda s: ZH.get(s, s)
    return lambda s: s
