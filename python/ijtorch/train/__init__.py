"""ijtorch train."""
