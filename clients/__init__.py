"""Flower clients of fsl-sage-flwr."""

from clients.cse_fsl import CSEFSLClient
from clients.fedavg import FedAvgClient
from clients.fsl_sage import FSLSageClient
from clients.splitfed import SplitFedClient

__all__ = ["CSEFSLClient", "FedAvgClient", "FSLSageClient", "SplitFedClient"]
