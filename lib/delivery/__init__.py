"""Getting a candidate into production safely: rollout, canary analysis, promotion and rollback."""
