"""Training loop and inference (feature extraction, case evaluation)."""
