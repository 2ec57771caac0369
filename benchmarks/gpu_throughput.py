"""FSL-SAGE's compute on one device: client and server steps, alignment, and the share of the card's peak.

Synthetic CIFAR-shaped data (3x32x32, 10 classes) through the paper's ResNet-18 split,
so it needs no dataset. Prints a table and writes the figures as JSON::

    python -m benchmarks.gpu_throughput --device auto --out benchmarks/results/gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fsl_sage_flwr.core.alignment import align_auxiliary
from fsl_sage_flwr.core.estimation import client_step, server_step
from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.core.training import make_adam

# Dense peak matrix throughput in TFLOP/s by card name (vendor data sheets; SXM parts).
PEAK_TFLOPS = {
    "H100": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H200": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def main() -> None:
    """Run every measurement and print and save the figures."""
    args = _parser().parse_args()
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, cuda available {torch.cuda.is_available()}, device {device} ({name})", flush=True
    )
    steps, epochs = (3, 3) if args.quick else (args.steps, args.align_epochs)
    if args.quick:
        args.buffer = 64
    figures: dict = {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "batch_size": args.batch_size,
    }
    for precision in ("fp32", "bf16"):
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        figures[precision] = _measure(args, device, precision, steps, epochs)
    peaks = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    for precision in ("fp32", "bf16"):
        if precision in figures and peaks:
            achieved = figures[precision]["client_tflops"]
            figures[precision]["client_share_of_peak"] = {k: achieved / v for k, v in peaks.items()}
    _print_table(figures)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.out}")


def _measure(args: argparse.Namespace, device: torch.device, precision: str, steps: int, epochs: int) -> dict:
    torch.manual_seed(0)
    split = build_split_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    client, server, aux = split.client.to(device), split.server.to(device), split.aux.to(device)
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
    autocast = _autocast(device, precision)
    c_opt, s_opt = make_adam(client, 1e-3, 1e-4), make_adam(server, 1e-3, 1e-4)

    def client_once() -> torch.Tensor:
        with autocast:
            return client_step(client, aux, c_opt, x, y)

    def server_once(z: torch.Tensor) -> None:
        with autocast:
            server_step(server, s_opt, z.float(), y)

    z = client_once()
    server_once(z)  # warm-up of kernels and allocator
    client_flops = _client_flops(client, x)
    client_seconds = _timed(device, steps, client_once)
    server_seconds = _timed(device, steps, lambda: server_once(z))
    # Alignment: the paper's 1,000 buffered activations and 100 epochs at batch 1,000.
    buffer_x = torch.randn(args.buffer, 3, 32, 32, generator=gen).to(device)
    buffer_y = torch.randint(0, 10, (args.buffer,), generator=gen).to(device)
    with torch.no_grad():
        buffer_z = client(buffer_x).float()
    results = {}
    for label, patience in (("align", 0), ("align_early_stop", 5)):
        a, opt = copy.deepcopy(aux), None
        opt = make_adam(a, 1e-3, 1e-4)
        _sync(device)
        # autocast's weight cache would keep the aux's first bf16 weights for the whole
        # alignment (it lives until the context exits); without it every step sees the update.
        with _autocast(device, precision, cache_enabled=False):
            report = align_auxiliary(
                a,
                opt,
                server,
                buffer_z,
                buffer_y,
                epochs=epochs,
                batch_size=1000,
                generator=torch.Generator().manual_seed(2),
                patience=patience,
            )
        _sync(device)
        results[label] = {
            "seconds": report.seconds,
            "epochs": report.epochs,
            "cosine_before": report.cosine_before,
            "cosine_after": report.cosine_after,
        }
    per_step = client_seconds / steps
    return {
        "client_images_per_second": args.batch_size / per_step,
        "client_step_ms": 1000 * per_step,
        "client_flops_per_step": client_flops,
        "client_tflops": client_flops / per_step / 1e12,
        "server_samples_per_second": args.batch_size * steps / server_seconds,
        **results,
        "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }


def _client_flops(client: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of the client model's forward and backward pass on ``x``.

    The auxiliary model's input-gradient estimate (``torch.autograd.grad``) is left
    out: the flop counter cannot follow it, and the aux is small beside the client.
    """
    twin = copy.deepcopy(client)
    with FlopCounterMode(display=False) as counter:
        z = twin(x)
        z.backward(torch.ones_like(z))
    return counter.get_total_flops()


def _timed(device: torch.device, steps: int, fn) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return time.perf_counter() - start


def _autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _print_table(figures: dict) -> None:
    print(f"\n{figures['device_name']}, batch {figures['batch_size']}")
    for precision in ("fp32", "bf16"):
        f = figures.get(precision)
        if not f:
            continue
        share = f.get("client_share_of_peak")
        share_text = ", ".join(f"{100 * v:.1f}% of {k} peak" for k, v in share.items()) if share else "peak unknown"
        print(
            f"{precision}: client {f['client_images_per_second']:.0f} images/s "
            f"({f['client_tflops']:.1f} TFLOP/s; {share_text}); "
            f"server {f['server_samples_per_second']:.0f} samples/s; alignment {f['align']['seconds']:.2f} s "
            f"({f['align']['epochs']} epochs, "
            f"cosine {f['align']['cosine_before']:.3f} -> {f['align']['cosine_after']:.3f}); "
            f"early stop {f['align_early_stop']['seconds']:.2f} s ({f['align_early_stop']['epochs']} epochs, "
            f"cosine -> {f['align_early_stop']['cosine_after']:.3f})"
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--align-epochs", type=int, default=100)
    p.add_argument("--buffer", type=int, default=1000, help="buffered samples aligned on (the paper: 1,000)")
    p.add_argument("--quick", action="store_true", help="3 steps and 3 alignment epochs (a smoke run)")
    p.add_argument("--out", default="")
    return p


if __name__ == "__main__":
    main()
