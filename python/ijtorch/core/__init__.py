"""What models, training and tasks all use, below all of them: progress events, tiled prediction,
percentile normalization, label-map helpers and colours. Imports nothing else of ijtorch but
``errors`` and ``image``."""
