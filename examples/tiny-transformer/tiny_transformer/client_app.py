"""ClientApp: trains the client part of the split transformer on this node's source files."""

import torch
from flwr.clientapp import ClientApp

from tiny_transformer.task import load_partition, make_spec

# A model this small gains nothing from several threads; leave the cores to the other clients.
torch.set_num_threads(1)

app = ClientApp()
make_spec().register(app, load_partition)
