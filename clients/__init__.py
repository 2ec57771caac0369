"""The clients of fsl-sage-flwr (canonical import: ``fsl_sage_flwr``)."""

from fsl_sage_flwr.clients import CSEFSLClient, FedAvgClient, FSLSageClient, SplitFedClient

__all__ = ["CSEFSLClient", "FedAvgClient", "FSLSageClient", "SplitFedClient"]
