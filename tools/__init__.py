"""Command-line tools: shared argument parsing and error reporting (cli), the ablation runner (ablate)."""
