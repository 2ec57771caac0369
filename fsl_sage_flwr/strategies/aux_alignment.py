"""The FSL-SAGE server's alignment runs: auxiliary models fitted to the server model, one by one or stacked."""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO
from typing import Any

import torch
from flwr.common.logger import log
from torch import nn

from fsl_sage_flwr.core.alignment import (
    AlignmentReport,
    AlignmentSettings,
    align_auxiliaries_stacked,
    align_auxiliary,
)
from fsl_sage_flwr.core.alignment_schedule import AlignmentPlan
from fsl_sage_flwr.core.checkpoint import ClientStore
from fsl_sage_flwr.core.client_slots import ClientSlot
from fsl_sage_flwr.core.losses import CROSS_ENTROPY, SplitLoss
from fsl_sage_flwr.core.training import derive_seed


class AuxAligner:
    """Align clients' auxiliary models to the server model's cut-layer gradients.

    Each client's aux is fitted on its buffer of uploads to the server model's
    gradients (Nair et al., ICML 2025, Alg. 1), one client after another or all
    at once in one vmapped pass (``AlignmentSettings.stacked``), with the same
    result. Every alignment is logged and kept until :meth:`pop_summary`.

    Parameters
    ----------
    store : ClientStore
        Where the clients' aux models, optimizers and buffers live.
    device : torch.device
        Where the server model is, and the buffers are moved for alignment.
    loss : SplitLoss
        The split's loss, whose input gradients are matched.
    """

    def __init__(self, store: ClientStore, device: torch.device, loss: SplitLoss = CROSS_ENTROPY) -> None:
        self.store = store
        self.device = device
        self.loss = loss
        self._reports: list[AlignmentReport] = []

    def align(
        self, slots: Sequence[ClientSlot], server_model: nn.Module, settings: AlignmentSettings, server_round: int
    ) -> None:
        """Align the aux of each slot with a non-empty buffer; mark it pending delivery."""
        if settings.stacked:
            # No more clients at once than the store caches: an evicted state would lose its update.
            size = self.store.max_cached
            for start in range(0, len(slots), size):
                self._align_stacked(slots[start : start + size], server_model, settings, server_round)
        else:
            for slot in slots:
                self.align_one(slot, server_model, settings, server_round)

    def run(
        self,
        plan: AlignmentPlan,
        slots: Sequence[ClientSlot],
        server_model: nn.Module,
        settings: AlignmentSettings,
        server_round: int,
    ) -> None:
        """Log why ``plan`` aligns whom it does, then align ``slots``, the slots of ``plan.due``."""
        for partition_id in plan.unchanged:
            log(INFO, "skipped aligning aux of partition %d: buffer unchanged", partition_id)
        for partition_id, cosine in plan.triggered:
            log(
                INFO,
                "aligning aux of partition %d: gradient cosine %.3f under %.3f",
                partition_id,
                cosine,
                settings.threshold,
            )
        if plan.over_budget is not None:
            log(
                INFO,
                "alignment budget of %d bytes spent: aux of partition %d stays",
                settings.budget_bytes,
                plan.over_budget,
            )
        self.align(slots, server_model, settings, server_round)

    def pop_summary(self) -> dict[str, Any]:
        """Count, epochs, seconds and mean cosines before and after of the alignments since the last call.

        Empty when none ran.
        """
        reports, self._reports = self._reports, []
        if not reports:
            return {}
        return {
            "alignments": len(reports),
            "align_epochs": sum(r.epochs for r in reports),
            "align_seconds": sum(r.seconds for r in reports),
            "align_cosine_before": sum(r.cosine_before for r in reports) / len(reports),
            "align_cosine_after": sum(r.cosine_after for r in reports) / len(reports),
        }

    def align_one(
        self, slot: ClientSlot, server_model: nn.Module, settings: AlignmentSettings, server_round: int
    ) -> None:
        """Align the aux of one slot, whatever ``settings.stacked`` says; nothing if its buffer is empty."""
        state = slot.state
        if len(state.buffer) == 0:
            return
        z, y = (t.to(self.device) for t in state.buffer.tensors())  # a stored buffer loads on the CPU
        report = align_auxiliary(
            state.aux,
            state.aux_optimizer,
            server_model,
            z,
            y,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            generator=_minibatch_order(slot, settings, server_round),
            patience=settings.patience,
            min_improvement=settings.min_improvement,
            loss_fn=self.loss,
        )
        self._record(slot, report)

    def _align_stacked(
        self, slots: Sequence[ClientSlot], server_model: nn.Module, settings: AlignmentSettings, server_round: int
    ) -> None:
        slots = [slot for slot in slots if len(slot.state.buffer) > 0]
        if not slots:
            return
        states = [slot.state for slot in slots]  # one lookup each: the store may load from disk
        reports = align_auxiliaries_stacked(
            [state.aux for state in states],
            [state.aux_optimizer for state in states],
            server_model,
            [tuple(t.to(self.device) for t in state.buffer.tensors()) for state in states],
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            generators=[_minibatch_order(slot, settings, server_round) for slot in slots],
            patience=settings.patience,
            min_improvement=settings.min_improvement,
            loss_fn=self.loss,
        )
        for slot, report in zip(slots, reports):
            self._record(slot, report)

    def _record(self, slot: ClientSlot, report: AlignmentReport) -> None:
        self.store.changed(slot.partition_id)
        slot.aux_pending = True
        slot.buffer_changed = False
        self._reports.append(report)
        log(
            INFO,
            "aligned aux of partition %d on %d samples in %d epochs, %.2f s: matching loss %.4g -> %.4g, "
            "cosine %.3f -> %.3f",
            slot.partition_id,
            report.num_samples,
            report.epochs,
            report.seconds,
            report.loss_before,
            report.loss_after,
            report.cosine_before,
            report.cosine_after,
        )


def _minibatch_order(slot: ClientSlot, settings: AlignmentSettings, server_round: int) -> torch.Generator:
    """The minibatch order of one client's alignment, the same one by one and stacked."""
    return torch.Generator().manual_seed(derive_seed(settings.seed, server_round, slot.partition_id, "align"))


def log_alignment_settings(alignment: AlignmentSettings, warm_up: str, warm_up_attempts: int) -> None:
    """Log FSL-SAGE's alignment and warm-up settings, the last part of the strategy's start-up summary."""
    log(INFO, "\t└──> Auxiliary alignment (FSL-SAGE):")
    log(INFO, "\t\t├──Every %d rounds | buffer %d samples per client", alignment.interval, alignment.buffer_size)
    log(
        INFO,
        "\t\t├──Epochs %d | batch %d | Adam lr %g, weight decay %g",
        alignment.epochs,
        alignment.batch_size,
        alignment.lr,
        alignment.weight_decay,
    )
    log(INFO, "\t\t├──Early stop: patience %d, min. improvement %g", alignment.patience, alignment.min_improvement)
    if alignment.threshold > 0:
        budget = f"{alignment.budget_bytes} bytes" if alignment.budget_bytes else "no limit"
        log(INFO, "\t\t├──Adaptive: also under gradient cosine %g, budget %s", alignment.threshold, budget)
    log(INFO, "\t\t└──Warm-up of %s nodes, attempts per node: %d", warm_up, warm_up_attempts)
