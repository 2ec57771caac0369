"""Seconds and fidelity of auxiliary alignment: one by one, early stop, stacked.

Trains the client and server parts of a split network briefly on Fashion-MNIST
(centrally, FSL-SAGE's way: client on its auxiliary model's estimate, server on
the activations), then gives each of ``--clients`` clients a buffer of
``--samples`` activations of its own disjoint slice of the training set and a
fresh auxiliary model with its own Adam. Every variant aligns identical copies
of these auxiliary models and optimizers against the same server model, in this
one process, so the printed ratios compare like with like:

- ``full``: ``--epochs`` epochs, client after client (Nair et al., ICML 2025);
- ``early``: the same with early stop (``--patience``, ``--min-improvement``);
- ``stacked`` and ``stacked+early``: all clients at once
  (:func:`fsl_sage_flwr.core.alignment.align_auxiliaries_stacked`).

It also times one local client epoch over a client's samples (batch ``--batch-size``).

Usage (from the repository folder)::

    OMP_NUM_THREADS=1 python -m benchmarks.alignment_cost --model cnn --samples 1000
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from fsl_sage_flwr.core.alignment import AlignmentReport, align_auxiliaries_stacked, align_auxiliary
from fsl_sage_flwr.core.estimation import client_step
from fsl_sage_flwr.core.models import build_split_model, required_input_shape
from fsl_sage_flwr.core.training import make_adam
from fsl_sage_flwr.data import load_dataset


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", help="split model: cnn or resnet18")
    parser.add_argument("--data-dir", default="../shared/data/fashion-mnist")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--samples", type=int, default=1000, help="buffer size per client")
    parser.add_argument("--epochs", type=int, default=100, help="alignment epochs (the paper: 100)")
    parser.add_argument("--align-batch-size", type=int, default=1000)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--min-improvement", type=float, default=0.05)
    parser.add_argument("--train-steps", type=int, default=100, help="warm-up training steps before buffering")
    parser.add_argument("--batch-size", type=int, default=64, help="local training batch")
    return parser.parse_args()


def main() -> None:
    """Train briefly, buffer, align every way, print the figures."""
    args = _parse()
    torch.manual_seed(0)
    shape = required_input_shape(args.model)
    data = load_dataset("fashion-mnist", data_dir=args.data_dir, input_shape=shape)
    split = build_split_model(args.model, num_classes=data.num_classes, input_shape=data.input_shape)
    x_all = torch.from_numpy(data.train.images)
    y_all = torch.from_numpy(data.train.labels)
    _warm_up(split, x_all, y_all, args.train_steps, args.batch_size)

    buffers, auxes, optimizers = [], [], []
    for k in range(args.clients):
        part = slice(k * args.samples, (k + 1) * args.samples)
        with torch.no_grad():
            split.client.eval()
            buffers.append((split.client(x_all[part]), y_all[part]))
        torch.manual_seed(100 + k)
        aux = build_split_model(
            args.model, num_classes=data.num_classes, input_shape=data.input_shape, parts=("aux",)
        ).aux
        auxes.append(aux)
        optimizers.append(make_adam(aux, 1e-3, 1e-4))

    local = _local_epoch_seconds(split, auxes[0], x_all[: args.samples], y_all[: args.samples], args.batch_size)
    common = dict(epochs=args.epochs, batch_size=args.align_batch_size)
    early = dict(patience=args.patience, min_improvement=args.min_improvement)
    results = {
        "full": _one_by_one(auxes, optimizers, split.server, buffers, **common),
        "early": _one_by_one(auxes, optimizers, split.server, buffers, **common, **early),
        "stacked": _stacked(auxes, optimizers, split.server, buffers, **common),
        "stacked+early": _stacked(auxes, optimizers, split.server, buffers, **common, **early),
    }
    print(
        f"{args.model} split, Fashion-MNIST, {args.clients} clients x {args.samples} samples, "
        f"{args.epochs} epochs, threads {torch.get_num_threads()}"
    )
    full_cosine, full_seconds = results["full"][1], results["full"][2]
    print(
        f"{'variant':<14} {'cos before':>10} {'cos after':>10} {'d cos':>7} {'epochs':>7} {'seconds':>8} {'x full':>7}"
    )
    for name, (before, after, seconds, epochs) in results.items():
        print(
            f"{name:<14} {before:>10.4f} {after:>10.4f} {after - full_cosine:>+7.4f} {epochs:>7d} "
            f"{seconds:>8.2f} {seconds / full_seconds:>7.3f}"
        )
    print(f"one local client epoch ({args.samples} samples, batch {args.batch_size}): {local:.3f} s")
    for name, (_, _, seconds, _) in results.items():
        print(f"alignment per client / local epoch, {name}: {seconds / args.clients / local:.1f}")


def _warm_up(split, x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int) -> None:
    """A short FSL-SAGE-like training: client on its aux's estimate, server on ``z``."""
    client_opt = make_adam(split.client, 1e-3, 1e-4)
    aux_opt = make_adam(split.aux, 1e-3, 1e-4)
    server_opt = make_adam(split.server, 1e-3, 1e-4)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=g)
        z = client_step(split.client, split.aux, client_opt, x[idx], y[idx])
        for model, opt in ((split.server, server_opt), (split.aux, aux_opt)):
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(z), y[idx]).backward()
            opt.step()


def _local_epoch_seconds(split, aux, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    client = copy.deepcopy(split.client)
    optimizer = make_adam(client, 1e-3, 1e-4)
    started = time.perf_counter()
    for start in range(0, x.shape[0] - 1, batch_size):
        client_step(client, aux, optimizer, x[start : start + batch_size], y[start : start + batch_size])
    return time.perf_counter() - started


def _summary(reports: list[AlignmentReport], seconds: float) -> tuple[float, float, float, int]:
    return (
        float(np.mean([r.cosine_before for r in reports])),
        float(np.mean([r.cosine_after for r in reports])),
        seconds,
        sum(r.epochs for r in reports),
    )


def _one_by_one(auxes, optimizers, server, buffers, **kwargs) -> tuple[float, float, float, int]:
    auxes, optimizers = _copies(auxes, optimizers)
    started = time.perf_counter()
    reports = [
        align_auxiliary(a, o, server, z, y, generator=torch.Generator().manual_seed(k), **kwargs)
        for k, (a, o, (z, y)) in enumerate(zip(auxes, optimizers, buffers))
    ]
    return _summary(reports, time.perf_counter() - started)


def _stacked(auxes, optimizers, server, buffers, **kwargs) -> tuple[float, float, float, int]:
    auxes, optimizers = _copies(auxes, optimizers)
    generators = [torch.Generator().manual_seed(k) for k in range(len(auxes))]
    started = time.perf_counter()
    reports = align_auxiliaries_stacked(auxes, optimizers, server, buffers, generators=generators, **kwargs)
    return _summary(reports, time.perf_counter() - started)


def _copies(auxes, optimizers):
    """Fresh copies of the aux models with optimizers in the same state."""
    new_auxes = [copy.deepcopy(a) for a in auxes]
    new_opts = []
    for a, o in zip(new_auxes, optimizers):
        opt = make_adam(a, 1e-3, 1e-4)
        opt.load_state_dict(o.state_dict())
        new_opts.append(opt)
    return new_auxes, new_opts


if __name__ == "__main__":
    main()
