"""What a provider webhook is answered with."""

from __future__ import annotations

from pydantic import BaseModel, Field


class WebhookReceipt(BaseModel):
    received: int = Field(description="events recognised in the request")
    duplicates: int = Field(description="events stored by an earlier delivery")
    unmatched: int = Field(description="events stored for a message not known (yet)")
