"""Input reconstruction from uploaded activations by an honest-but-curious server: how much of the input leaks.

Two attacks use only what the server holds (:mod:`benchmarks.leak_setup`):

- **optimisation**: find ``x`` whose activations under the global client model match
  the upload, ``min_x ||client(x) - z||^2 + tv * TV(x)`` (He et al., ACSAC 2019, the
  white-box model-inversion attack on split learning), one uploaded batch at a time;
- **decoder**: a small network trained on the public set to map ``client(x)`` back to
  ``x``, then applied to the uploads.

Each is scored against the true inputs with PSNR and SSIM (scikit-image) and by the
accuracy of a fixed classifier trained on clean data; the public set's mean image is
the no-attack baseline.

Usage::

    python -m benchmarks.inversion                 # Fashion-MNIST, cnn split, a few minutes
    python -m benchmarks.inversion --out inversion.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from benchmarks.leak_setup import (
    LeakSetting,
    add_setting_arguments,
    build_setting,
    client_activations,
    run_leak_benchmark,
    train_classifier,
)
from fsl_sage_flwr.core.estimation import preserved_buffers
from fsl_sage_flwr.core.training import minibatches


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels, per image, summed over the batch."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return (dh + dw).sum()


def optimisation_attack(setting: LeakSetting, steps: int, lr: float, tv: float) -> torch.Tensor:
    """Reconstruct each uploaded batch by matching the global client model's activations to it."""
    low, high = setting.value_range
    client = setting.client
    for parameter in client.parameters():
        parameter.requires_grad_(False)
    recovered = []
    try:
        for start in range(0, len(setting.uploads), setting.batch_size):
            z = setting.uploads[start : start + setting.batch_size]
            x = torch.zeros((len(z), *setting.victim_x.shape[1:]), requires_grad=True)
            optimizer = torch.optim.Adam([x], lr=lr)
            with preserved_buffers(client):
                client.train()  # uploads are computed in train mode, with the batch's statistics
                for _ in range(steps):
                    optimizer.zero_grad(set_to_none=True)
                    loss = (client(x) - z).pow(2).mean() + tv * total_variation(x) / len(z)
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        x.clamp_(low, high)
            recovered.append(x.detach())
    finally:
        for parameter in client.parameters():
            parameter.requires_grad_(True)
    return torch.cat(recovered)


def build_decoder(cut_shape: tuple[int, ...], input_shape: tuple[int, ...]) -> nn.Module:
    """A small upsampling CNN from the cut's shape to the input's."""
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Conv2d(cut_shape[0], 64, 3, padding=1),
        nn.ReLU(),
        nn.Upsample(size=(max(height // 2, 1), max(width // 2, 1)), mode="bilinear"),
        nn.Conv2d(64, 32, 3, padding=1),
        nn.ReLU(),
        nn.Upsample(size=(height, width), mode="bilinear"),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, channels, 3, padding=1),
    )


def decoder_attack(setting: LeakSetting, epochs: int, seed: int) -> torch.Tensor:
    """Train a decoder on the public set's activations; apply it to the uploads."""
    torch.manual_seed(seed)
    public_z = client_activations(setting.client, setting.public_x, setting.batch_size)
    decoder = build_decoder(tuple(public_z.shape[1:]), tuple(setting.public_x.shape[1:]))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    decoder.train()
    for _ in range(epochs):
        for zb, xb in minibatches(public_z, setting.public_x, 64, generator):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.mse_loss(decoder(zb), xb).backward()
            optimizer.step()
    decoder.eval()
    low, high = setting.value_range
    with torch.no_grad():
        return decoder(setting.uploads).clamp(low, high)


def score(setting: LeakSetting, recovered: torch.Tensor, classifier: nn.Module) -> dict[str, float]:
    """Mean PSNR and SSIM against the true inputs, and the fixed classifier's accuracy on ``recovered``."""
    low, high = setting.value_range
    truth, guess = setting.victim_x.numpy().astype(np.float64), recovered.numpy().astype(np.float64)
    psnr, ssim = [], []
    for true_image, image in zip(truth, guess):
        psnr.append(peak_signal_noise_ratio(true_image, image, data_range=high - low))
        window = min(7, *true_image.shape[1:]) // 2 * 2 + 1 if min(true_image.shape[1:]) >= 3 else 3
        ssim.append(structural_similarity(true_image, image, data_range=high - low, channel_axis=0, win_size=window))
    with torch.no_grad():
        accuracy = float((classifier(recovered).argmax(1) == setting.victim_y).float().mean())
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "classifier_accuracy": accuracy}


def run_inversion(args: argparse.Namespace) -> dict:
    """Build the setting, run both attacks and the baselines; return the figures."""
    start = time.perf_counter()
    setting = build_setting(args)
    trained = time.perf_counter()
    classifier = train_classifier(
        setting.train_x, setting.train_y, int(setting.train_y.max()) + 1, args.classifier_epochs, args.seed
    )
    mean_image = setting.public_x.mean(0, keepdim=True).expand_as(setting.victim_x)
    with torch.no_grad():
        truth_accuracy = float((classifier(setting.victim_x).argmax(1) == setting.victim_y).float().mean())
    figures = {"public mean image (no attack)": score(setting, mean_image, classifier)}
    t0 = time.perf_counter()
    figures["optimisation"] = score(setting, optimisation_attack(setting, args.steps, args.lr, args.tv), classifier)
    figures["optimisation"]["seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    figures["decoder"] = score(setting, decoder_attack(setting, args.decoder_epochs, args.seed), classifier)
    figures["decoder"]["seconds"] = time.perf_counter() - t0
    return {
        "settings": vars(args),
        "samples": len(setting.victim_y),
        "training_seconds": trained - start,
        "classifier_accuracy_on_true_inputs": truth_accuracy,
        "attacks": figures,
    }


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    p = add_setting_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--steps", type=int, default=150, help="optimisation steps per uploaded batch")
    p.add_argument("--lr", type=float, default=0.05, help="Adam step of the optimisation attack")
    p.add_argument("--tv", type=float, default=0.05, help="weight of the total-variation prior")
    p.add_argument("--decoder-epochs", type=int, default=10)
    p.add_argument("--classifier-epochs", type=int, default=2)
    return p


def report(args: argparse.Namespace, figures: dict) -> None:
    """Print one line per attack."""
    print(
        f"{figures['samples']} uploaded samples attacked after {args.rounds} rounds; the fixed classifier "
        f"scores {figures['classifier_accuracy_on_true_inputs']:.3f} on the true inputs"
    )
    for name, row in figures["attacks"].items():
        print(
            f"{name:30s} PSNR {row['psnr']:6.2f} dB  SSIM {row['ssim']:.3f}  "
            f"classifier accuracy {row['classifier_accuracy']:.3f}",
            flush=True,
        )


def main() -> None:
    """Run the attacks and print their figures."""
    run_leak_benchmark(build_parser(), run_inversion, report)


if __name__ == "__main__":
    main()
