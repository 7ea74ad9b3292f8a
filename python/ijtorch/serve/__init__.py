"""ijtorch serve."""
