"""Flower strategies of fsl-sage-flwr."""

from fsl_sage_flwr.strategies.fsl_sage import AlignmentSettings, FSLSage
from fsl_sage_flwr.strategies.legacy import FSLSageLegacy
from fsl_sage_flwr.strategies.upload_training import UploadTrainingServer

__all__ = ["AlignmentSettings", "FSLSage", "FSLSageLegacy", "UploadTrainingServer"]
