"""ijtorch io."""
