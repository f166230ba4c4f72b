"""Small SVG charts drawn on the server: a send step's funnel and a daily bar series."""

from __future__ import annotations

from html import escape

from nurture.analytics.journey import SendFunnel

BAR_W, ROW_H, LABEL_W = 300, 24, 120


def funnel_svg(funnel: SendFunnel) -> str:
    """Horizontal bars, each against the messages the step made."""
    rates = funnel.rates()
    rows: list[tuple[str, int, str]] = [
        ("messages", funnel.messages, ""),
        ("sent", funnel.sent, ""),
        ("delivered", funnel.delivered, _pct(rates["delivery_rate"])),
        ("opened", funnel.opened, _pct(rates["open_rate"])),
        ("clicked", funnel.clicked, _pct(rates["click_rate"])),
        ("skipped", sum(funnel.skipped.values()), ""),
        ("failed", sum(funnel.failed.values()), ""),
        ("bounced", funnel.bounced, _pct(rates["bounce_rate"])),
        ("complained", funnel.complained, _pct(rates["complaint_rate"])),
        ("unsubscribed", funnel.unsubscribed, _pct(rates["unsubscribe_rate"])),
    ]
    top = max(funnel.messages, 1)
    width = LABEL_W + BAR_W + 110
    height = ROW_H * len(rows) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="funnel" width="{width}" '
        f'height="{height}" role="img" aria-label="funnel of step {escape(funnel.step_id)}">'
    ]
    colours = {"bounced": "#d9534f", "complained": "#d9534f", "unsubscribed": "#f0ad4e"}
    for i, (name, value, rate) in enumerate(rows):
        y = 4 + i * ROW_H
        bar = BAR_W * value / top
        parts.append(
            f'<text x="{LABEL_W - 8}" y="{y + 16}" text-anchor="end">{name}</text>'
            f'<rect x="{LABEL_W}" y="{y + 3}" width="{max(bar, 1):.1f}" height="{ROW_H - 6}" '
            f'fill="{colours.get(name, "#4a7bd0")}" data-name="{name}" data-value="{value}"/>'
            f'<text x="{LABEL_W + max(bar, 1) + 6:.1f}" y="{y + 16}">{value}'
            f"{' · ' + rate if rate else ''}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


def bars_svg(labels: list[str], values: list[int], title: str) -> str:
    """A small vertical bar chart of one daily series."""
    width, height, pad = max(16 * len(values), 200), 90, 16
    top = max(max(values, default=0), 1)
    step = width / max(len(values), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="bars" width="{width:.0f}" '
        f'height="{height + pad}" role="img" aria-label="{escape(title)}">'
    ]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = height * value / top
        parts.append(
            f'<rect x="{i * step + 1:.1f}" y="{height - h:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="#4a7bd0"><title>{escape(label)}: {value}</title></rect>'
        )
    if labels:
        parts.append(f'<text x="0" y="{height + 13}" class="axis">{escape(labels[0])}</text>')
        parts.append(
            f'<text x="{width:.0f}" y="{height + 13}" class="axis" text-anchor="end">'
            f"{escape(labels[-1])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
