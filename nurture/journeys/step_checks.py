"""Checks of the split, webhook, assign_owner and send_push steps that a schema cannot say:
split weights that sum to 100 with distinct names, a webhook URL that is http(s), and the
templates in webhook and push steps (syntax, unknown variables), found at save time rather
than at send time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from nurture.journeys.definition import SendPushStep, SplitStep, Step, WebhookStep

# (place inside the step, message); place "" is the step itself.
StepProblem = tuple[str, str]


def step_problems(step: Step) -> Iterator[StepProblem]:
    match step:
        case SplitStep():
            yield from _split_problems(step)
        case WebhookStep():
            yield from _webhook_problems(step)
        case SendPushStep():
            yield from _template_problems("title", step.title)
            yield from _template_problems("body", step.body)
            for name, value in step.data.items():
                yield from _template_problems(f"data.{name}", value)


def _split_problems(step: SplitStep) -> Iterator[StepProblem]:
    total = sum(path.weight for path in step.paths)
    if total != 100:
        weights = " + ".join(str(path.weight) for path in step.paths)
        yield "paths", f"weights must sum to 100 (got {weights} = {total})"
    seen: set[str] = set()
    for i, path in enumerate(step.paths):
        if path.name in seen:
            yield f"paths.{i}.name", f'path name "{path.name}" is used twice'
        seen.add(path.name)


def _webhook_problems(step: WebhookStep) -> Iterator[StepProblem]:
    if "{" not in step.url:  # a templated URL is checked once rendered, before the call
        parts = urlsplit(step.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            yield "url", f"{step.url!r} is not an http(s) URL with a host"
    elif not step.url.lower().startswith(("http://", "https://")):
        yield "url", "a templated URL must start with http:// or https://"
    yield from _template_problems("url", step.url)
    for name, value in step.headers.items():
        if name.lower() in ("host", "content-length", "transfer-encoding"):
            yield f"headers.{name}", f"header {name!r} is set by Nurture"
        yield from _template_problems(f"headers.{name}", value)
    yield from _body_problems("body", step.body)
    for field, pointer in step.save.items():
        if not pointer or any(not part for part in pointer.split(".")):
            yield f"save.{field}", f"{pointer!r} is not a dotted path such as 'owner.id'"


def _body_problems(place: str, value: Any) -> Iterator[StepProblem]:
    if isinstance(value, str):
        yield from _template_problems(place, value)
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _body_problems(f"{place}.{key}", inner)
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _body_problems(f"{place}.{i}", inner)


def _template_problems(place: str, source: str) -> Iterator[StepProblem]:
    if "{" not in source:
        return
    # Imported here: the template checks bring Jinja and the render pool, which the
    # workflow sandbox (that imports the definition) does not need.
    from nurture.content.checks import part_problems

    for problem in part_problems("text", source):
        yield place, problem["message"]
