"""Simulations of fsl-sage-flwr: `flwr run` wrappers, in-process runs and comparisons."""
