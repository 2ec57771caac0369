"""The leak benchmarks: what their attacks optimise, how they score, and a tiny run on digits."""

from __future__ import annotations

import torch

from benchmarks.inversion import build_parser as inversion_parser
from benchmarks.inversion import optimisation_attack, score, total_variation
from benchmarks.label_leak import build_parser as label_parser
from benchmarks.label_leak import labelled_share, run_label_leak
from benchmarks.leak_setup import LeakSetting, client_activations
from fsl_sage_flwr.core.models import build_split_model


def _setting(samples: int = 16) -> LeakSetting:
    torch.manual_seed(0)
    split = build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    x = torch.randn(samples, 1, 8, 8).clamp(-2, 2)
    y = torch.arange(samples) % 10
    return LeakSetting(
        client=split.client,
        server=split.server,
        uploads=client_activations(split.client, x, 8),
        victim_x=x,
        victim_y=y,
        public_x=x,
        public_y=y,
        train_x=x,
        train_y=y,
        value_range=(-2.0, 2.0),
        batch_size=8,
    )


def test_the_optimisation_attack_matches_the_uploads_better_than_a_blank_guess():
    # Prepare
    setting = _setting()
    blank = torch.zeros_like(setting.victim_x)
    # Execute
    recovered = optimisation_attack(setting, steps=40, lr=0.1, tv=0.0)
    # Assert: within the value range, and its activations closer to the uploads than the blank's
    assert recovered.shape == setting.victim_x.shape
    assert recovered.min() >= -2.0 and recovered.max() <= 2.0
    match = (client_activations(setting.client, recovered, 8) - setting.uploads).pow(2).mean()
    blank_match = (client_activations(setting.client, blank, 8) - setting.uploads).pow(2).mean()
    assert match < 0.5 * blank_match
    assert all(p.requires_grad for p in setting.client.parameters())  # the model is left trainable


def test_score_ranks_a_near_copy_above_a_blank_image_and_total_variation_favours_smooth_images():
    # Prepare
    setting = _setting()
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    near = setting.victim_x + 0.01 * torch.randn_like(setting.victim_x)
    # Execute
    close, blank = score(setting, near, classifier), score(setting, torch.zeros_like(near), classifier)
    # Assert
    assert close["psnr"] > blank["psnr"] + 20 and close["ssim"] > 0.99 > blank["ssim"]
    assert 0.0 <= close["classifier_accuracy"] <= 1.0
    assert total_variation(torch.zeros(2, 1, 8, 8)) < total_variation(setting.victim_x[:2])


def test_labelled_share_counts_every_qth_batch_over_the_rounds():
    # Execute / Assert: 10 batches of 10, steps 0 and 5 uploaded in one round; every batch when q = 1
    assert labelled_share(100, 10, 5, 1, seed=0) == 0.2
    assert labelled_share(100, 10, 1, 1, seed=0) == 1.0
    assert 0.2 < labelled_share(100, 10, 5, 3, seed=0) < 0.6  # reshuffled rounds upload other samples


def test_a_tiny_label_leak_run_on_digits_learns_labels_from_activations_above_chance():
    # Prepare: one round of two clients on digits
    tiny = ["--dataset", "digits", "--train-subset", "0", "--clients", "2", "--rounds", "1", "--align-epochs", "1"]
    args = label_parser().parse_args([*tiny, "--victims", "32", "--public", "200", "--probe-epochs", "5"])
    # Execute
    figures = run_label_leak(args)
    # Assert: every uploaded label is received; the server model reads labels off activations above a guess
    assert figures["uploaded_label_share"] == 1.0 and figures["samples"] == 32
    assert figures["server_model_accuracy"] > figures["majority_guess"] + 0.1
    assert 0.0 <= figures["probe_accuracy"] <= 1.0
    assert inversion_parser().parse_args(tiny).rounds == 1  # both benchmarks take the same setting options
