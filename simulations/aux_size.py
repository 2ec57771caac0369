"""Which auxiliary model to use: each aux variant's gradient fidelity after alignment against its memory.

Trains the whole split network (client and server parts together, plain backprop)
for ``--steps`` minibatches, so the server part is a partly trained model as it is
during a run, then takes the client's cut-layer activations of ``--samples``
training images and runs :func:`fsl_sage_flwr.choose_aux_variant` on them: every aux
variant of the split model is aligned as FSL-SAGE's server aligns, and measured on
held-out samples. Prints the table and the choice.

Usage (from the repository folder)::

    python -m simulations.aux_size --model cnn --dataset fashion-mnist --budget-kib 100
"""

from __future__ import annotations

import argparse
import sys

import torch

from fsl_sage_flwr.core.aux_sizing import choose_aux_variant
from fsl_sage_flwr.core.estimation import preserved_buffers
from fsl_sage_flwr.core.models import SPLIT_MODELS, build_full_model, build_split_model, required_input_shape
from fsl_sage_flwr.core.training import evaluate_classifier, make_adam, minibatches
from fsl_sage_flwr.data import load_dataset
from simulations.paths import SHARED_DATA

#: The project's shared data folder beside the repository: the data-dir when none is given.


def main(argv: list[str] | None = None) -> int:
    """Train briefly, measure every aux variant, print the table and the choice."""
    args = _parser().parse_args(argv)
    torch.manual_seed(args.seed)
    data = load_dataset(
        args.dataset,
        data_dir=args.data_dir or str(SHARED_DATA),
        input_shape=required_input_shape(args.model),
        train_subset=args.train_subset or None,
        seed=args.seed,
    )
    split = build_split_model(args.model, num_classes=data.num_classes, input_shape=data.input_shape)
    x, y = torch.from_numpy(data.train.images), torch.from_numpy(data.train.labels)
    network = build_full_model(split)
    optimizer = make_adam(network, 1e-3, 1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    steps = 0
    while steps < args.steps:
        for xb, yb in minibatches(x, y, args.batch_size, generator):
            network.train()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(network(xb), yb).backward()
            optimizer.step()
            steps += 1
            if steps == args.steps:
                break
    _, accuracy = evaluate_classifier(network, torch.from_numpy(data.test.images), torch.from_numpy(data.test.labels))
    print(f"split network after {steps} steps: test accuracy {accuracy:.4f}", flush=True)
    with torch.no_grad(), preserved_buffers(split.client):
        split.client.train()
        z = split.client(x[: args.samples])
    variants = SPLIT_MODELS[args.model].aux_variants

    def build_aux(variant: str) -> torch.nn.Module:
        built = build_split_model(
            args.model,
            num_classes=data.num_classes,
            input_shape=data.input_shape,
            aux_variant=variant,
            parts=("client", "aux"),
        )
        return built.aux

    choice = choose_aux_variant(
        build_aux,
        variants,
        split.server,
        z,
        y[: args.samples],
        memory_budget_bytes=int(args.budget_kib * 1024) if args.budget_kib else None,
        tolerance=args.tolerance,
        epochs=args.epochs,
        seed=args.seed,
    )
    print(choice.table())
    budget = f"{args.budget_kib:g} KiB on the client" if args.budget_kib else "no memory budget"
    print(f"\nchosen: {choice.variant} (within {args.tolerance:g} of the best cosine, {budget})")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", choices=sorted(SPLIT_MODELS))
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--train-subset", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=200, help="end-to-end training steps before measuring")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=1000, help="cut-layer samples; a quarter is held out")
    parser.add_argument("--epochs", type=int, default=30, help="alignment epochs per variant")
    parser.add_argument("--budget-kib", type=float, default=0.0, help="client memory for the aux; 0 = no limit")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    return parser


if __name__ == "__main__":
    sys.exit(main())
