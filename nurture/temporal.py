"""Connecting to Temporal: one client per process, pydantic payloads everywhere."""

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime

from nurture.settings import Settings


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """`runtime`: a Temporal runtime of its own (the worker's, exporting SDK metrics)."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        runtime=runtime,
    )
