"""How big a contact and what is written to it may be.

A contact's custom fields are what a journey's conditions read: the enrollment workflow loads
the fields it reads (`fields_read`, `load_contact`) into its history at the start and after
every change. Temporal refuses a payload over 2 MB (and terminates a workflow whose history
passes 50 MB), so a contact that may grow without bound can kill its own enrollments: three
900 KB patches stored a 2.7 MB contact whose load was retried forever. Every way of writing
fields (the API's upsert and patch, a CSV import row, a journey's `update_contact` step) and
a custom event's properties are therefore bounded here, with one measure:

- a value's size is the length in bytes of its JSON text as PostgreSQL prints `jsonb`
  (`", "` and `": "` separators, UTF-8), so the import can check it in SQL the same way;
- `max_field_bytes` bounds each custom field value and each event property value;
- `max_contact_bytes` bounds all of a contact's custom fields together (names included), and
  `max_event_properties_bytes` all of an event's properties.

`max_contact_bytes` itself may not exceed `MAX_CONTACT_BYTES_CEILING`, half of Temporal's
payload limit, so what `load_contact` returns always fits (with tags, lists and consent).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nurture.errors import PayloadTooLarge
from nurture.settings import Settings, get_settings

# Temporal's default limit for one payload (an activity result, a workflow input).
TEMPORAL_PAYLOAD_LIMIT = 2 * 1024 * 1024
MAX_CONTACT_BYTES_CEILING = TEMPORAL_PAYLOAD_LIMIT // 2


def json_size(value: Any) -> int:
    """Bytes of `value` as JSON text, the way PostgreSQL prints jsonb."""
    return len(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).encode())


@dataclass(frozen=True)
class SizeLimits:
    field_bytes: int = 64 * 1024
    contact_bytes: int = 256 * 1024
    event_properties_bytes: int = 64 * 1024

    @classmethod
    def of(cls, settings: Settings | None = None) -> SizeLimits:
        settings = settings or get_settings()
        return cls(
            field_bytes=settings.max_field_bytes,
            contact_bytes=settings.max_contact_bytes,
            event_properties_bytes=settings.max_event_properties_bytes,
        )

    def field_problems(
        self, values: Mapping[str, Any], prefix: str = "fields"
    ) -> list[tuple[str, str]]:
        """(path, message) for every value over `field_bytes` (empty: all fit)."""
        problems = []
        for name, value in values.items():
            if value is None:
                continue
            size = json_size(value)
            if size > self.field_bytes:
                problems.append(
                    (
                        f"{prefix}.{name}",
                        f"the value is {size} bytes as JSON, over the limit of "
                        f"{self.field_bytes} (settings.max_field_bytes)",
                    )
                )
        return problems

    def contact_problem(
        self, fields: Mapping[str, Any], prefix: str = "fields"
    ) -> tuple[str, str] | None:
        size = json_size(dict(fields))
        if size <= self.contact_bytes:
            return None
        return (
            prefix,
            f"the contact's custom fields would be {size} bytes as JSON, over the "
            f"limit of {self.contact_bytes} (settings.max_contact_bytes)",
        )

    def check_fields(self, given: Mapping[str, Any], stored: Mapping[str, Any]) -> None:
        """Refuse (413, naming each field) values over the field limit in `given`, or
        `stored`, the fields the contact would have, over the contact limit."""
        problems = self.field_problems(given)
        if not problems and (whole := self.contact_problem(stored)):
            problems.append(whole)
        if problems:
            raise too_large(problems)

    def check_event_properties(self, properties: Mapping[str, Any]) -> None:
        problems = self.field_problems(properties, prefix="properties")
        size = json_size(dict(properties))
        if not problems and size > self.event_properties_bytes:
            problems.append(
                (
                    "properties",
                    f"{size} bytes as JSON, over the limit of "
                    f"{self.event_properties_bytes} (settings.max_event_properties_bytes)",
                )
            )
        if problems:
            raise too_large(problems)


def too_large(problems: list[tuple[str, str]]) -> PayloadTooLarge:
    detail = [{"path": path, "message": message} for path, message in problems]
    return PayloadTooLarge(
        "too large: " + "; ".join(f"{d['path']} ({d['message']})" for d in detail[:3]),
        detail=detail,
    )
