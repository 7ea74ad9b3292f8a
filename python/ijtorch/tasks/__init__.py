"""ijtorch tasks."""
