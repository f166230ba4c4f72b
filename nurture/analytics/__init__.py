"""How journeys do: per-step counts, send funnels, daily series and the weekly review.

Everything is counted from the tables the engine already writes (`enrollments`,
`enrollment_steps`, `messages`, `events`, `webhook_events`, `suppressions`) with grouped,
indexed queries: one query per kind of count for a whole journey, never one per contact or
message. See docs/analytics.md.
"""
