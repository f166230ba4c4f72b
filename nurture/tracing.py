"""What makes one contact's journey easy to find and read in the Temporal Web UI.

Typed search attributes (registered on the server: `nurture dev` passes them to the dev server,
`nurture setup-temporal` adds them to a cluster), kept current by the workflow, so that
`JourneyKey="welcome" AND JourneyStep="wait_1d"` lists exactly the contacts waiting there.
"""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

CONTACT_ID = SearchAttributeKey.for_keyword("ContactId")
JOURNEY_KEY = SearchAttributeKey.for_keyword("JourneyKey")
JOURNEY_VERSION = SearchAttributeKey.for_int("JourneyVersion")
JOURNEY_STEP = SearchAttributeKey.for_keyword("JourneyStep")
ENROLLMENT_STATUS = SearchAttributeKey.for_keyword("EnrollmentStatus")

SEARCH_ATTRIBUTES: dict[str, str] = {
    CONTACT_ID.name: "Keyword",
    JOURNEY_KEY.name: "Keyword",
    JOURNEY_VERSION.name: "Int",
    JOURNEY_STEP.name: "Keyword",
    ENROLLMENT_STATUS.name: "Keyword",
}

_INDEXED_TYPES = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
}


# Signals per second a batch operation may send (pausing a journey of 100,000 enrollments,
# nurture.journeys.batch_signals). The server's default, 50, would take over half an hour.
BATCHER_RPS = 2000
# Signals of one batch operation in flight at once. The server's default, 5, held a pause of
# 100,000 to about 175 a second on 2 cores, slower than 50 in flight one by one from a client
# (docs/benchmarks.md, "Pausing 100,000 enrollments").
BATCHER_CONCURRENCY = 50


def dev_server_flags() -> list[str]:
    """`temporal server start-dev` arguments that register the search attributes, let
    batch operations signal at `BATCHER_RPS`, `BATCHER_CONCURRENCY` at once, and allow eager
    workflow start (the bulk activity's enrollments run their first task in the worker that
    started them)."""
    flags = []
    for name, kind in SEARCH_ATTRIBUTES.items():
        flags += ["--search-attribute", f"{name}={kind}"]
    flags += ["--dynamic-config-value", f"worker.batcherRPS={BATCHER_RPS}"]
    flags += ["--dynamic-config-value", f"worker.batcherConcurrency={BATCHER_CONCURRENCY}"]
    flags += ["--dynamic-config-value", "system.enableEagerWorkflowStart=true"]
    return flags


def initial_search_attributes(
    contact_id: str, journey_key: str, version: int
) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(CONTACT_ID, contact_id),
            SearchAttributePair(JOURNEY_KEY, journey_key),
            SearchAttributePair(JOURNEY_VERSION, version),
            SearchAttributePair(ENROLLMENT_STATUS, "active"),
        ]
    )


async def ensure_search_attributes(client: Client, namespace: str) -> list[str]:
    """Register whichever of our search attributes the namespace lacks; return those added."""
    try:
        existing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        known = set(existing.custom_attributes) | set(existing.system_attributes)
    except RPCError as err:
        if err.status != RPCStatusCode.UNIMPLEMENTED:  # the time-skipping test server
            raise
        known = set()
    missing = {
        name: _INDEXED_TYPES[kind] for name, kind in SEARCH_ATTRIBUTES.items() if name not in known
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    return sorted(missing)
