"""Request and response models of the API (never the table models)."""
