"""Generated stubs for featurizer.v1 (``python protos/generate.py``; do not edit by hand)."""
