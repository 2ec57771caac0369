"""Record, config and metric key names of the messages between the split strategies and their clients.

Positions and names are defined here and nowhere else; each message's layout is
described where it is built: a train request in
:mod:`fsl_sage_flwr.transport.requests`, a train reply in
:mod:`fsl_sage_flwr.transport.replies` and a SplitFed step in
:mod:`fsl_sage_flwr.transport.splitfed_step`.
"""

ARRAYS_KEY = "arrays"
AUX_KEY = "aux"
CONFIG_KEY = "config"
SMASHED_KEY = "smashed"
METRICS_KEY = "metrics"
GRAD_KEY = "grad"
# Flower's legacy ``fit`` layout (``flwr.compat``), which a NumPyClient reads and writes.
REQUEST_ARRAYS_KEY = "fitins.parameters"
REQUEST_CONFIG_KEY = "fitins.config"
REPLY_ARRAYS_KEY = "fitres.parameters"
REPLY_NUM_EXAMPLES_KEY = "fitres.num_examples"
REPLY_METRICS_KEY = "fitres.metrics"
REPLY_STATUS_KEY = "fitres.status"
# Config keys of a request.
SERVER_ROUND_KEY = "server-round"
WARMUP_KEY = "warmup"
AUX_INCLUDED_KEY = "aux-included"
STEP_KEY = "step"
# Metric keys of a reply.
PARTITION_ID_KEY = "partition-id"
NUM_EXAMPLES_KEY = "num-examples"
LOCAL_STEPS_KEY = "local-steps"
PEAK_MEMORY_KEY = "peak-memory-bytes"
NUM_BATCHES_KEY = "num-batches"
# Prefix of the auxiliary model's arrays in a request.
AUX_PREFIX = "aux."
# Action of the SplitFed step messages (message type ``train.splitstep``).
SPLIT_STEP_ACTION = "splitstep"
