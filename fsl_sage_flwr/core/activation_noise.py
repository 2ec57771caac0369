"""The Gaussian mechanism on cut-layer activations: each sample clipped to an L2 norm, then noised."""

from __future__ import annotations

import torch


def clip_and_noise(z: torch.Tensor, clip: float, noise_multiplier: float, generator: torch.Generator) -> torch.Tensor:
    """Clip each sample of ``z`` to L2 norm ``clip`` and add N(0, (noise_multiplier * clip)^2) to every entry.

    The Gaussian mechanism of Dwork and Roth (2014, Thm. A.1) applied per
    release: with each sample's norm bounded by C, adding or removing one
    sample moves the batch by at most C, so the noise scale sigma * C gives the
    guarantee the accountant (:mod:`fsl_sage_flwr.core.dp_accounting`) counts.

    Parameters
    ----------
    z : torch.Tensor
        A batch of activations, samples on the first axis.
    clip : float
        C, the largest L2 norm a sample keeps.
    noise_multiplier : float
        sigma; 0 clips only.
    generator : torch.Generator
        A CPU generator of its own, so the noise draws nothing from the training streams.

    Returns
    -------
    torch.Tensor
        The float32 released batch, on ``z``'s device.
    """
    z = z.detach().float()
    norms = z.flatten(1).norm(dim=1).clamp_min(1e-12)
    scale = (clip / norms).clamp(max=1.0).view(-1, *([1] * (z.dim() - 1)))
    noise = torch.randn(z.shape, generator=generator, dtype=torch.float32) * (noise_multiplier * clip)
    return z * scale + noise.to(z.device)
