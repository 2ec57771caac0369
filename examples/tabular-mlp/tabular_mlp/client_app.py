"""ClientApp: trains the client part of the split MLP on this node's rows."""

import torch
from flwr.clientapp import ClientApp

from tabular_mlp.task import load_partition, make_spec

# A small MLP gains nothing from several threads; leave the cores to the other clients.
torch.set_num_threads(1)

app = ClientApp()
make_spec().register(app, load_partition)
