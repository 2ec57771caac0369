"""Flower strategies of fsl-sage-flwr."""

from fsl_sage_flwr.strategies.fsl_sage import AlignmentSettings, FSLSage
from fsl_sage_flwr.strategies.legacy import FSLSageLegacy
from fsl_sage_flwr.strategies.split_fedavg import SplitFedAvg

__all__ = ["AlignmentSettings", "FSLSage", "FSLSageLegacy", "SplitFedAvg"]
