"""What journey conditions see of a contact (`ContactFacts`), built in one place so that the
workflow's `load_contact` activity and the goal-conversion report judge a goal alike."""

from __future__ import annotations

from collections.abc import Iterable

from nurture.contracts import ContactFacts
from nurture.db.rows import ContactLike


def facts_of(contact: ContactLike, list_keys: Iterable[str]) -> ContactFacts:
    return ContactFacts(
        contact_id=contact.id,
        has_email=bool(contact.email),
        has_phone=bool(contact.phone),
        time_zone=contact.time_zone,
        fields=contact.fields,
        tags=list(contact.tags),
        lists=list(list_keys),
        consent=contact.consent,
    )
