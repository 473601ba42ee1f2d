"""The HTTP model service."""
