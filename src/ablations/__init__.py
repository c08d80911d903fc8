"""ablations: classic deep-learning studies as one-command, reproducible experiments."""
__version__ = "0.1.0"
