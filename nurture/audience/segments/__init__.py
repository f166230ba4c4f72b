"""Segments: dynamic audiences, a JSON filter compiled to SQL over contacts."""
