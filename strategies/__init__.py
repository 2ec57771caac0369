"""The strategies of fsl-sage-flwr (canonical import: ``fsl_sage_flwr``)."""

from fsl_sage_flwr.strategies import AlignmentSettings, FSLSage, FSLSageLegacy, UploadTrainingServer
from fsl_sage_flwr.strategies.cse_fsl import CSEFSL
from fsl_sage_flwr.strategies.splitfed import SplitFed

__all__ = ["CSEFSL", "AlignmentSettings", "FSLSage", "FSLSageLegacy", "SplitFed", "UploadTrainingServer"]
