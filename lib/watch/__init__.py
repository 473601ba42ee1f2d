"""Watching production: monitoring and drift, notifications, the run index."""
