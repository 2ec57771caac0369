"""Flower clients of fsl-sage-flwr."""

from clients.fsl_sage import FSLSageClient

__all__ = ["FSLSageClient"]
