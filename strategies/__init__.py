"""Flower strategies of fsl-sage-flwr."""

from strategies.fsl_sage import FSLSage, FSLSageServerConfig

__all__ = ["FSLSage", "FSLSageServerConfig"]
