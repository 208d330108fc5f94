"""Training loop (trainer), the one clip-encoding path (encoding), the three-case evaluation (evaluation),
the public inference API (inference: FeatureExtractor, ...) and search over your own tracklets (search)."""
