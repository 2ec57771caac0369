"""The CSE-FSL baseline strategy: averaged client and auxiliary models, one server model."""

from __future__ import annotations

from fsl_sage_flwr.strategies.upload_training import UploadTrainingServer


class CSEFSL(UploadTrainingServer):
    """CSE-FSL (Mu and Shen), the closest baseline of FSL-SAGE (Nair et al., ICML 2025).

    Clients train their model and an auxiliary classifier on a local loss and
    upload ``(z, y)`` every q steps; the server trains its single model on the
    uploads. Unlike FSL-SAGE, the auxiliary models are averaged with the client
    models each round (``shared_model`` holds both) and never aligned.
    """
