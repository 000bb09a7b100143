"""Paper tables and figures rendered from per-point records."""
