"""Know before you run: each algorithm's bytes and memory on a split, and whether FSL-SAGE saves against FedAvg.

Prints the table of :func:`fsl_sage_flwr.planning.plan` and its verdict. The split
is a user's ``SplitSpec`` (``--spec module.path:make_spec``, a function returning
one or the spec itself) or a built-in model on a built-in data set (``--model cnn
--dataset digits``), whose clients then get the sizes the app's partitioning gives.

Usage (from the repository folder)::

    python -m simulations.plan --model cnn --dataset digits --clients 10 --rounds 20
    python -m simulations.plan --spec my_project.split:make_spec --input-shape 3,32,32 \\
        --clients 100 --samples-per-client 500 --rounds 200 --batch-size 64
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from fsl_sage_flwr.core.alignment import AlignmentSettings
from fsl_sage_flwr.core.models import SPLIT_MODELS, aux_variants, build_split_model, required_input_shape
from fsl_sage_flwr.data import DATASETS, PARTITIONINGS, load_dataset, partition_indices
from fsl_sage_flwr.planning import Plan, plan, plan_summary, plan_table, verdict
from fsl_sage_flwr.transport.compression import UPLOAD_DTYPES
from fsl_sage_flwr.transport.local_training import LocalTraining

#: The project's shared data folder beside the repository: the data-dir when none is given.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    """Plan the run the arguments describe; print the summary, the table and the verdict."""
    args = _parser().parse_args(argv)
    training = LocalTraining(
        batch_size=args.batch_size,
        local_epochs=args.local_epochs,
        upload_interval=args.upload_interval,
        upload_dtype=args.upload_dtype,
        seed=args.seed,
    )
    alignment = AlignmentSettings(interval=args.align_interval, buffer_size=args.buffer_size, seed=args.seed)
    spec, samples, input_shape = _spec_and_samples(args)
    result = plan(
        spec,
        samples_per_client=samples,
        clients=args.clients,
        num_server_rounds=args.rounds,
        training=training,
        alignment=alignment,
        fraction_train=args.fraction_train,
        min_train_nodes=args.min_train_nodes,
        warm_up=args.warm_up,
        input_shape=input_shape,
        seed=args.seed,
    )
    print(plan_summary(result))
    print()
    print(plan_table(result))
    print()
    print(verdict(result).text())
    if args.aux_variants:
        print()
        print(_aux_variant_table(args, result, samples, input_shape))
    return 0


def _spec_and_samples(args: argparse.Namespace) -> tuple[Any, int | list[int], tuple[int, ...] | None]:
    """The split to plan, each client's samples and the input shape, from ``--spec`` or ``--model``."""
    input_shape = tuple(int(d) for d in args.input_shape.split(",")) if args.input_shape else None
    if args.spec:
        if args.samples_per_client is None:
            raise SystemExit("--spec needs --samples-per-client (the training samples of each client)")
        return load_spec(args.spec), args.samples_per_client, input_shape
    data = load_dataset(
        args.dataset,
        data_dir=args.data_dir or str(SHARED_DATA),
        input_shape=required_input_shape(args.model),
        train_subset=args.train_subset or None,
        seed=args.seed,
    )
    split = build_split_model(
        args.model, num_classes=data.num_classes, input_shape=data.input_shape, aux_variant=args.aux_variant
    )
    if args.samples_per_client is not None:
        return split, args.samples_per_client, data.input_shape
    parts = partition_indices(
        data.train.labels, args.clients, partitioning=args.partitioning, alpha=args.alpha, seed=args.seed
    )
    return split, [len(p) for p in parts], data.input_shape


def load_spec(reference: str) -> Any:
    """Import ``module.path:name`` and return the spec: ``name`` itself, or what calling it returns.

    Raises
    ------
    SystemExit
        Naming the reference, when it is not ``module:name`` or does not import.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"--spec must be module.path:name, got {reference!r}")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"--spec {reference}: {err}") from err
    spec = target() if callable(target) and not hasattr(target, "build") else target
    if not hasattr(spec, "build"):
        raise SystemExit(f"--spec {reference} gives a {type(spec).__name__}, not a SplitSpec")
    return spec


def _aux_variant_table(
    args: argparse.Namespace, base: Plan, samples: int | list[int], input_shape: tuple[int, ...] | None
) -> str:
    """FSL-SAGE's run bytes and client peak with each aux variant of a built-in model."""
    if args.spec:
        return "--aux-variants needs --model: a spec has one aux model"
    lines = [
        "| aux variant | aux KiB | FSL-SAGE run MiB | FSL-SAGE client peak KiB | FedAvg client peak KiB |",
        "|---|---|---|---|---|",
    ]
    classes = _classes(args)
    for variant in aux_variants(args.model):
        split = build_split_model(args.model, num_classes=classes, input_shape=input_shape, aux_variant=variant)
        result = plan(
            split,
            samples_per_client=samples,
            clients=args.clients,
            num_server_rounds=args.rounds,
            training=base.training,
            alignment=base.alignment,
            fraction_train=args.fraction_train,
            min_train_nodes=args.min_train_nodes,
            warm_up=args.warm_up,
            input_shape=input_shape,
            seed=args.seed,
        )
        sage, fedavg = result["fsl-sage"], result["fedavg"]
        lines.append(
            f"| {variant} | {result.models.aux / 1024:,.1f} | {sage.total_bytes / 2**20:,.2f} "
            f"| {sage.client_memory.peak / 1024:,.1f} | {fedavg.client_memory.peak / 1024:,.1f} |"
        )
    return "\n".join(lines)


def _classes(args: argparse.Namespace) -> int:
    data = load_dataset(
        args.dataset,
        data_dir=args.data_dir or str(SHARED_DATA),
        input_shape=required_input_shape(args.model),
        train_subset=args.train_subset or None,
        seed=args.seed,
    )
    return data.num_classes


def _parser() -> argparse.ArgumentParser:
    defaults = LocalTraining()
    align = AlignmentSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--spec", default="", help="module.path:name of a SplitSpec, or of a function returning one")
    split.add_argument("--model", default="cnn", choices=sorted(SPLIT_MODELS), help="a built-in split model")
    parser.add_argument("--dataset", default="digits", choices=sorted(DATASETS), help="with --model")
    parser.add_argument("--data-dir", default="", help="with --model: folder holding the data set files")
    parser.add_argument("--train-subset", type=int, default=0, help="with --model: stratified subsample, 0 = all")
    parser.add_argument("--partitioning", default="dirichlet", choices=sorted(PARTITIONINGS), help="with --model")
    parser.add_argument("--alpha", type=float, default=1.0, help="with --model: Dirichlet concentration")
    parser.add_argument("--aux-variant", default="default", help="with --model: its auxiliary model")
    parser.add_argument("--aux-variants", action="store_true", help="with --model: also plan every aux variant")
    parser.add_argument("--input-shape", default="", help="C,H,W of one input (a spec without a test set)")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--samples-per-client", type=int, default=None, help="required with --spec")
    parser.add_argument("--rounds", type=int, default=20, help="num-server-rounds")
    parser.add_argument("--fraction-train", type=float, default=1.0)
    parser.add_argument("--min-train-nodes", type=int, default=1)
    parser.add_argument("--warm-up", default="sampled", choices=["sampled", "all"], help="FSL-SAGE's warm-up")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--local-epochs", type=int, default=defaults.local_epochs)
    parser.add_argument("--upload-interval", type=int, default=defaults.upload_interval, help="q")
    parser.add_argument("--upload-dtype", default=defaults.upload_dtype, choices=UPLOAD_DTYPES)
    parser.add_argument("--align-interval", type=int, default=align.interval, help="l")
    parser.add_argument("--buffer-size", type=int, default=align.buffer_size)
    parser.add_argument("--seed", type=int, default=0)
    return parser


if __name__ == "__main__":
    sys.exit(main())
