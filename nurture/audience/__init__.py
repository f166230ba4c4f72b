"""The audience side: contacts and every change to them, lists, events, segments, imports,
suppressions."""
