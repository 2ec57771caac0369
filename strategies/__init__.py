"""Flower strategies of fsl-sage-flwr."""

from strategies.fsl_sage import AlignmentSettings, FSLSage
from strategies.split_fedavg import ServerTraining, SplitFedAvg

__all__ = ["AlignmentSettings", "FSLSage", "ServerTraining", "SplitFedAvg"]
