"""Star-convex instance segmentation, arranged as upstream StarDist: geometry (rays, distances, polygon/polyhedron
rendering and NMS: numpy only), network (the torch module and loss, imported lazily) and model (a trained model:
thresholds, normalisation, tiled prediction, save/load), each in 2D and 3D."""
