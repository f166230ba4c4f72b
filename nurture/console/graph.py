"""The journey flowchart as SVG, laid out on the server (grandalf's Sugiyama layout): steps in
layers from the start down, each box with the step's live counts and a link to who is there.

Drawn on the server so that the page needs no layout library and the counts in the picture
are the very numbers of `nurture.analytics.journey` (the browser test compares them).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout

from nurture.analytics.journey import StepStats
from nurture.journeys.definition import JourneyDefinition, step_targets

NODE_W, NODE_H = 210, 78
GAP_X, GAP_Y = 40, 60
MARGIN = 20
END = "__end__"

# Box colours per step type: sends, waits, decisions, contact changes, exits.
COLOURS = {
    "send_email": "#e0ecff",
    "send_sms": "#e0ecff",
    "wait": "#fff4d6",
    "wait_for": "#fff4d6",
    "branch": "#f1e4ff",
    "exit": "#ffe1e1",
}
DEFAULT_COLOUR = "#e5f6e8"


class _View:
    def __init__(self, w: float, h: float) -> None:
        self.w, self.h = w, h
        self.xy: tuple[float, float] = (0.0, 0.0)


@dataclass
class Placed:
    step_id: str
    x: float  # top-left
    y: float


def describe(step: Any) -> str:
    """One line saying what the step does."""
    kind: str = step.type
    if kind in ("send_email", "send_sms"):
        return f"{'email' if kind == 'send_email' else 'SMS'} · {step.template}"
    if kind == "wait":
        if step.duration is not None:
            return f"wait {_duration(step.duration)}"
        if step.until is not None:
            return f"wait until {step.until:%Y-%m-%d %H:%M}"
        return f"wait until {step.until_field}"
    if kind == "wait_for":
        event = step.event
        what = event.type if event.type != "custom" else f"event {event.name}"
        link = f" {event.link}" if getattr(event, "link", None) else ""
        return f"wait for {what}{link} · up to {_duration(step.timeout)}"
    if kind == "branch":
        return f"branch · {len(step.rules)} rule{'s' if len(step.rules) > 1 else ''}"
    if kind == "exit":
        return f"exit · {step.reason}"
    if kind in ("add_to_list", "remove_from_list"):
        return f"{kind.replace('_', ' ')} {step.list}"
    return kind.replace("_", " ")


def _duration(value: Any) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _edge_label(place: str) -> str:
    return {"next": "", "on_event": "event", "on_timeout": "timeout"}.get(place, place)


def layout(
    definition: JourneyDefinition, order: list[str]
) -> tuple[dict[str, Placed], list[tuple[str, str, str]], float, float]:
    """Positions of the steps (and an end node), the edges (from, to, label), width, height."""
    edges: list[tuple[str, str, str]] = []
    ends = False
    for step_id in order:
        step = definition.steps[step_id]
        for place, target in step_targets(step):
            if step.type == "exit":
                continue
            if target is None:
                ends = True
                edges.append((step_id, END, _edge_label(place)))
            elif target in definition.steps:
                edges.append((step_id, target, _edge_label(place)))
    names = [*order, END] if ends else list(order)
    vertices = {name: Vertex(name) for name in names}
    for vertex in vertices.values():
        vertex.view = _View(NODE_W, NODE_H)
    graph = Graph(
        list(vertices.values()),
        [Edge(vertices[a], vertices[b]) for a, b, _ in edges if a != b],
    )
    placed: dict[str, Placed] = {}
    offset_x = 0.0
    for component in graph.C:
        sugiyama = SugiyamaLayout(component)
        sugiyama.xspace, sugiyama.yspace = GAP_X, GAP_Y
        roots = [vertices[order[0]]] if order and vertices[order[0]] in component.sV else None
        sugiyama.init_all(roots=roots)
        sugiyama.draw()
        xs = [v.view.xy[0] for v in component.sV]
        ys = [v.view.xy[1] for v in component.sV]
        left, top = min(xs) - NODE_W / 2, min(ys) - NODE_H / 2
        for vertex in component.sV:
            x, y = vertex.view.xy
            placed[vertex.data] = Placed(
                vertex.data,
                x - NODE_W / 2 - left + offset_x + MARGIN,
                y - NODE_H / 2 - top + MARGIN,
            )
        offset_x += max(xs) - min(xs) + NODE_W + GAP_X
    width = max((p.x for p in placed.values()), default=0) + NODE_W + MARGIN
    height = max((p.y for p in placed.values()), default=0) + NODE_H + MARGIN
    return placed, edges, width, height


def flowchart_svg(
    definition: JourneyDefinition,
    order: list[str],
    stats: dict[str, StepStats],
    step_url: str,
) -> str:
    """The SVG markup; `step_url` has `{step}` where the step id goes."""
    placed, edges, width, height = layout(definition, order)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="flowchart" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        'aria-label="journey flowchart">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="#667"/></marker></defs>',
    ]
    for source, target, label in edges:
        if source not in placed or target not in placed:
            continue
        a, b = placed[source], placed[target]
        x1, y1 = a.x + NODE_W / 2, a.y + NODE_H
        x2, y2 = b.x + NODE_W / 2, b.y
        if source == target or y2 <= y1:  # a loop back up: go round the side
            x1, y1, x2, y2 = a.x + NODE_W, a.y + NODE_H / 2, b.x + NODE_W, b.y + NODE_H / 2
            bend = max(abs(y1 - y2) / 3, 40)
            path = f"M {x1:.0f} {y1:.0f} C {x1 + bend:.0f} {y1:.0f} {x2 + bend:.0f} {y2:.0f} {x2:.0f} {y2:.0f}"
            lx, ly = max(x1, x2) + bend * 0.75, (y1 + y2) / 2
        else:
            mid = (y1 + y2) / 2
            path = f"M {x1:.0f} {y1:.0f} C {x1:.0f} {mid:.0f} {x2:.0f} {mid:.0f} {x2:.0f} {y2:.0f}"
            lx, ly = (x1 + x2) / 2, mid
        parts.append(
            f'<path d="{path}" fill="none" stroke="#667" stroke-width="1.4" '
            'marker-end="url(#arrow)"/>'
        )
        if label:
            parts.append(
                f'<text x="{lx:.0f}" y="{ly:.0f}" class="edge-label" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    for name, place in placed.items():
        if name == END:
            cx, cy = place.x + NODE_W / 2, place.y + NODE_H / 2
            parts.append(
                f'<g class="node end"><ellipse cx="{cx:.0f}" cy="{cy:.0f}" rx="46" ry="20" '
                'fill="#eee" stroke="#667"/>'
                f'<text x="{cx:.0f}" y="{cy + 4:.0f}" text-anchor="middle">completed</text></g>'
            )
            continue
        step = definition.steps[name]
        s = stats.get(name) or StepStats(name, step.type, step.title, [])
        colour = COLOURS.get(step.type, DEFAULT_COLOUR)
        href = escape(step_url.replace("{step}", name))
        exits = f" · ended {s.exited}" if s.exited else ""
        parts.append(
            f'<a href="{href}" class="node-link"><g class="node" data-step="{escape(name)}" '
            f'data-now="{s.now}" data-entered="{s.entered}" data-passed="{s.passed}" '
            f'data-exited="{s.exited}">'
            f'<rect x="{place.x:.0f}" y="{place.y:.0f}" width="{NODE_W}" height="{NODE_H}" '
            f'rx="8" fill="{colour}" stroke="#556"/>'
            f'<text x="{place.x + 10:.0f}" y="{place.y + 20:.0f}" class="node-title">'
            f"{escape(step.title or name)}</text>"
            f'<text x="{place.x + 10:.0f}" y="{place.y + 38:.0f}" class="node-kind">'
            f"{escape(describe(step))[:40]}</text>"
            f'<text x="{place.x + 10:.0f}" y="{place.y + 62:.0f}" class="node-counts">'
            f'<tspan class="now">{s.now} here now</tspan> · entered {s.entered}{exits}</text>'
            "</g></a>"
        )
    parts.append("</svg>")
    return "".join(parts)
