"""Which clients' auxiliary models FSL-SAGE aligns after a round, and the byte budget of the extra ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fsl_sage_flwr.core.alignment import AlignmentSettings


@dataclass
class AlignmentBudget:
    """What the fidelity-triggered alignments have cost, against ``AlignmentSettings.budget_bytes``.

    Each extra alignment sends one aux model to its client; the paper's fixed
    interval (Nair et al., ICML 2025, Alg. 1) costs nothing against it.

    Attributes
    ----------
    spent_bytes : int
        Aux bytes the triggered alignments have sent in the run so far.
    triggered : int
        Alignments triggered since the last :meth:`pop_triggered`.
    """

    spent_bytes: int = 0
    triggered: int = 0

    def allows(self, cost: int, limit_bytes: int) -> bool:
        """Whether one more alignment of ``cost`` bytes stays within ``limit_bytes`` (0: no limit)."""
        return not limit_bytes or self.spent_bytes + cost <= limit_bytes

    def spend(self, cost: int) -> None:
        """Count one triggered alignment of ``cost`` bytes."""
        self.spent_bytes += cost
        self.triggered += 1

    def pop_triggered(self) -> int:
        """The alignments triggered since the last call."""
        triggered, self.triggered = self.triggered, 0
        return triggered


@dataclass(frozen=True)
class AlignmentCandidate:
    """What the schedule needs to know of one client after a round.

    Attributes
    ----------
    partition_id : int
        The client's partition.
    buffer_changed : bool
        Whether uploads entered its buffer since its aux was last aligned.
    cosine : float, optional
        Its gradient fidelity measured this round; ``None`` when not measured.
    """

    partition_id: int
    buffer_changed: bool
    cosine: float | None = None


@dataclass(frozen=True)
class AlignmentPlan:
    """The auxes to align after a round, and why the others are not.

    Attributes
    ----------
    due : tuple[int, ...]
        Partition ids whose aux is aligned, in that order.
    unchanged : tuple[int, ...]
        On an interval round, the partitions skipped because their buffer did not change.
    triggered : tuple[tuple[int, float], ...]
        Between interval rounds, ``(partition id, cosine)`` of each client aligned
        because its fidelity fell under the threshold, worst first.
    over_budget : int, optional
        The first partition whose triggered alignment the budget turned away.
    """

    due: tuple[int, ...] = ()
    unchanged: tuple[int, ...] = ()
    triggered: tuple[tuple[int, float], ...] = ()
    over_budget: int | None = None


def plan_alignment(
    server_round: int,
    num_rounds: int | None,
    settings: AlignmentSettings,
    candidates: Sequence[AlignmentCandidate],
    budget: AlignmentBudget,
    aux_nbytes: Callable[[], int],
) -> AlignmentPlan:
    """Choose the clients whose aux is aligned after ``server_round``; spend ``budget`` on the extra ones.

    Every ``settings.interval`` rounds, every client whose buffer changed, in
    partition order (Nair et al., ICML 2025, Alg. 1). In the rounds between,
    with adaptive alignment (``settings.threshold > 0``), the clients whose
    measured cosine fell under the threshold, worst first, until the next one
    would exceed ``settings.budget_bytes``. Nothing after the last round: its
    auxes would reach no client.

    Parameters
    ----------
    server_round, num_rounds : int
        The round just trained and the run's length (``None``: unknown).
    settings : AlignmentSettings
        Interval, threshold and budget.
    candidates : Sequence[AlignmentCandidate]
        Every client the server keeps an aux for.
    budget : AlignmentBudget
        Updated in place with each triggered alignment.
    aux_nbytes : Callable[[], int]
        Bytes of one aux model; called only when a triggered alignment is weighed.
    """
    if num_rounds is not None and server_round >= num_rounds:
        return AlignmentPlan()
    if server_round % settings.interval == 0:
        ordered = sorted(candidates, key=lambda c: c.partition_id)
        return AlignmentPlan(
            due=tuple(c.partition_id for c in ordered if c.buffer_changed),
            unchanged=tuple(c.partition_id for c in ordered if not c.buffer_changed),
        )
    return _fidelity_triggered(settings, candidates, budget, aux_nbytes)


def _fidelity_triggered(
    settings: AlignmentSettings,
    candidates: Sequence[AlignmentCandidate],
    budget: AlignmentBudget,
    aux_nbytes: Callable[[], int],
) -> AlignmentPlan:
    if settings.threshold <= 0:
        return AlignmentPlan()
    changed = {c.partition_id: c.buffer_changed for c in candidates}
    low = sorted(
        (c.cosine, c.partition_id) for c in candidates if c.cosine is not None and c.cosine < settings.threshold
    )
    triggered: list[tuple[int, float]] = []
    over_budget = None
    for cosine, partition_id in low:
        # An unchanged buffer would align the aux to what it already matches.
        if not changed[partition_id]:
            continue
        cost = aux_nbytes()
        if not budget.allows(cost, settings.budget_bytes):
            over_budget = partition_id
            break
        budget.spend(cost)
        triggered.append((partition_id, cosine))
    return AlignmentPlan(due=tuple(p for p, _ in triggered), triggered=tuple(triggered), over_budget=over_budget)
