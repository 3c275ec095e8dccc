"""Public ops (being written)."""
