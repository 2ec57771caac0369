"""Label leakage to an honest-but-curious server: what it learns from the uploads, with and without the labels.

FSL-SAGE and CSE-FSL upload the true labels with every q-th batch's activations, so
the server knows the label of every uploaded sample, and with them each client's
label counts. This benchmark reports that share and what the server would learn
from the activations alone (were the labels withheld):

- **server model**: the server's own model on the uploads (it is trained to do exactly this);
- **probe**: a linear classifier on activations, trained on the public set's activations
  under the global client model.

Usage::

    python -m benchmarks.label_leak                 # Fashion-MNIST, cnn split, a few minutes
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from benchmarks.leak_setup import (
    LeakSetting,
    add_setting_arguments,
    build_setting,
    client_activations,
    run_leak_benchmark,
)
from fsl_sage_flwr.core.training import minibatches


def labelled_share(num_samples: int, batch_size: int, upload_interval: int, rounds: int, seed: int) -> float:
    """Share of a client's samples whose true label the server has received after ``rounds`` local epochs.

    Each round the client shuffles its samples and uploads ``(z, y)`` of every
    ``upload_interval``-th batch (steps 0, q, 2q, ...); the label of every
    uploaded sample reaches the server as it is.
    """
    generator = torch.Generator().manual_seed(seed)
    seen = torch.zeros(num_samples, dtype=torch.bool)
    for _ in range(rounds):
        order = torch.randperm(num_samples, generator=generator)
        for step, first in enumerate(range(0, num_samples, batch_size)):
            if step % upload_interval == 0:
                seen[order[first : first + batch_size]] = True
    return float(seen.double().mean())


def server_model_accuracy(setting: LeakSetting) -> float:
    """Accuracy of the server's own model on the uploaded activations."""
    setting.server.eval()
    with torch.no_grad():
        return float((setting.server(setting.uploads).argmax(1) == setting.victim_y).float().mean())


def probe_accuracy(setting: LeakSetting, epochs: int, seed: int) -> float:
    """Train a linear probe on public activations; return its accuracy on the uploads."""
    torch.manual_seed(seed)
    public_z = client_activations(setting.client, setting.public_x, setting.batch_size).flatten(1)
    classes = int(setting.train_y.max()) + 1
    probe = nn.Linear(public_z.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for zb, yb in minibatches(public_z, setting.public_y, 64, generator):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(probe(zb), yb).backward()
            optimizer.step()
    with torch.no_grad():
        return float((probe(setting.uploads.flatten(1)).argmax(1) == setting.victim_y).float().mean())


def run_label_leak(args: argparse.Namespace) -> dict:
    """Build the setting and measure every leak; return the figures."""
    start = time.perf_counter()
    setting = build_setting(args)
    client_samples = args.client_samples or len(setting.train_y) // args.clients
    classes = int(setting.train_y.max()) + 1
    majority = float(np.bincount(setting.public_y.numpy(), minlength=classes).max() / len(setting.public_y))
    return {
        "settings": vars(args),
        "samples": len(setting.victim_y),
        "uploaded_label_share": 1.0,  # the protocol sends y with every uploaded z
        "labelled_share_of_client_samples": labelled_share(
            client_samples, args.batch_size, args.upload_interval, args.rounds, args.seed
        ),
        "server_model_accuracy": server_model_accuracy(setting),
        "probe_accuracy": probe_accuracy(setting, args.probe_epochs, args.seed),
        "majority_guess": majority,
        "client_samples": client_samples,
        "seconds": time.perf_counter() - start,
    }


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    p = add_setting_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--probe-epochs", type=int, default=20)
    p.add_argument("--upload-interval", type=int, default=5)
    p.add_argument("--client-samples", type=int, default=0, help="a client's samples (0: train subset / clients)")
    return p


def report(args: argparse.Namespace, figures: dict) -> None:
    """Print what the server learns of the labels."""
    print(f"{figures['samples']} uploaded samples after {args.rounds} rounds")
    print(f"labels received with the uploads: {figures['uploaded_label_share']:.1%} of uploaded samples")
    print(
        f"labels received after {args.rounds} rounds: {figures['labelled_share_of_client_samples']:.1%} "
        f"of a client's {figures['client_samples']} samples (q = {args.upload_interval})"
    )
    print(f"from activations alone, server model: {figures['server_model_accuracy']:.1%}")
    print(f"from activations alone, linear probe on public data: {figures['probe_accuracy']:.1%}")
    print(f"majority-class guess: {figures['majority_guess']:.1%}", flush=True)


def main() -> None:
    """Run and print the figures."""
    run_leak_benchmark(build_parser(), run_label_leak, report)


if __name__ == "__main__":
    main()
