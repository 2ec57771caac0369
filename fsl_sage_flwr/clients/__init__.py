"""Flower clients of fsl-sage-flwr."""

from fsl_sage_flwr.clients.cse_fsl import CSEFSLClient
from fsl_sage_flwr.clients.fedavg import FedAvgClient
from fsl_sage_flwr.clients.fsl_sage import FSLSageClient
from fsl_sage_flwr.clients.splitfed import SplitFedClient

__all__ = ["CSEFSLClient", "FedAvgClient", "FSLSageClient", "SplitFedClient"]
