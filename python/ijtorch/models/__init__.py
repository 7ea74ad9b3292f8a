"""ijtorch models."""
