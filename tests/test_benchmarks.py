"""The device benchmark runs end to end and writes its figures (a smoke run on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow  # a ResNet-18 step per precision on the CPU: over two minutes here
def test_gpu_throughput_quick_run_writes_every_figure(tmp_path):
    # Execute
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.gpu_throughput",
            "--device",
            "cpu",
            "--quick",
            "--batch-size",
            "8",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    # Assert
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    for precision in ("fp32", "bf16"):
        f = figures[precision]
        assert f["client_images_per_second"] > 0 and f["client_flops_per_step"] > 0
        assert f["align"]["epochs"] == 3 and -1.0 <= f["align"]["cosine_after"] <= 1.0
