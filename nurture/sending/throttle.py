"""Throttling: each channel's sends run on a task queue of their own, which every worker polls
with `max_task_queue_activities_per_second` from the settings. That limit is kept by the
Temporal server for the whole queue, so it holds however many workers there are
(docs/send-rules.md)."""

from __future__ import annotations

CHANNELS = ("email", "sms", "push")


def send_task_queue(task_queue: str, channel: str) -> str:
    """The queue a workflow on `task_queue` sends `channel` messages through."""
    return f"{task_queue}-send-{channel}"
