"""The verdict on a plan: does FSL-SAGE save bytes and client memory against FedAvg, and what would change it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from fsl_sage_flwr.planning.planner import Plan
from fsl_sage_flwr.planning.traffic import activation_share, fsl_sage_rounds, step_batch_sizes
from fsl_sage_flwr.transport.compression import UPLOAD_DTYPES, upload_encoding

MIB = 1024 * 1024


@dataclass(frozen=True)
class Verdict:
    """FSL-SAGE against FedAvg on one plan, in plain sentences.

    Attributes
    ----------
    saves_bytes : bool
        FSL-SAGE sends fewer bytes over the run than FedAvg on the joined model.
    saves_client_memory : bool
        An FSL-SAGE client's peak is under a FedAvg client's.
    lines : tuple[str, ...]
        The verdict and, where FSL-SAGE costs more, the changes that would alter it, with their figures.
    """

    saves_bytes: bool
    saves_client_memory: bool
    lines: tuple[str, ...]

    def text(self) -> str:
        """The lines, one per line."""
        return "\n".join(self.lines)


def verdict(plan: Plan) -> Verdict:
    """Compare FSL-SAGE with FedAvg on ``plan``; say what would change a loss, with figures."""
    sage, fedavg = plan["fsl-sage"], plan["fedavg"]
    saves_bytes = sage.total_bytes < fedavg.total_bytes
    saves_memory = sage.client_memory.peak < fedavg.client_memory.peak
    lines = [_bytes_sentence(sage.total_bytes, fedavg.total_bytes)]
    if not saves_bytes:
        lines += _byte_changes(plan, fedavg.total_bytes)
    lines.append(_memory_sentence(sage.client_memory.peak, fedavg.client_memory.peak))
    if not saves_memory:
        lines += _memory_changes(plan)
    lines += [f"note: {note}" for note in plan.notes]
    return Verdict(saves_bytes, saves_memory, tuple(lines))


def _bytes_sentence(sage: int, fedavg: int) -> str:
    if sage < fedavg:
        return (
            f"FSL-SAGE saves communication: {_mib(sage)} over the run against FedAvg's {_mib(fedavg)} "
            f"({sage / fedavg:.0%})."
        )
    return (
        f"FSL-SAGE costs MORE communication than FedAvg on this split: {_mib(sage)} over the run against "
        f"{_mib(fedavg)} ({sage / fedavg:.0%})."
    )


def _memory_sentence(sage: int, fedavg: int) -> str:
    if sage < fedavg:
        return (
            f"FSL-SAGE saves client memory: a peak of {_kib(sage)} against FedAvg's {_kib(fedavg)} "
            f"({sage / fedavg:.0%})."
        )
    return (
        f"FSL-SAGE needs MORE client memory than FedAvg on this split: a peak of {_kib(sage)} against "
        f"{_kib(fedavg)} ({sage / fedavg:.0%})."
    )


def _byte_changes(plan: Plan, fedavg_total: int) -> list[str]:
    """A larger q, a smaller upload dtype and a later cut, each with what FSL-SAGE would then send."""
    lines = [_larger_q(plan, fedavg_total), *_smaller_dtypes(plan, fedavg_total)]
    if not any("under FedAvg" in line for line in lines):
        lines.append(_combined(plan, fedavg_total))
    return [*lines, _cut_size(plan, fedavg_total)]


def _combined(plan: Plan, fedavg_total: int) -> str:
    """The largest q with the smallest upload dtype together, when neither alone is enough."""
    q = max(len(step_batch_sizes(n, plan.training)) for n in plan.schedule.samples)
    total = _sage_total(plan, upload_interval=max(q, plan.training.upload_interval), upload_dtype="int8")
    outcome = "under FedAvg" if total < fedavg_total else "still more than FedAvg"
    return f"- both, upload-interval {q} and upload-dtype int8: FSL-SAGE would send {_mib(total)}, {outcome}."


def _sage_total(plan: Plan, **changes: object) -> int:
    training = dataclasses.replace(plan.training, **changes)
    return sum(r.down + r.up for r in fsl_sage_rounds(plan.models, plan.schedule, training, plan.alignment))


def _larger_q(plan: Plan, fedavg_total: int) -> str:
    q = plan.training.upload_interval
    most_steps = max(len(step_batch_sizes(n, plan.training)) for n in plan.schedule.samples)
    candidates = sorted({min(q * 2**k, most_steps) for k in range(1, 12)} - {q})
    candidates = [c for c in candidates if c > q]
    below = q
    for candidate in candidates:
        if _sage_total(plan, upload_interval=candidate) < fedavg_total:
            smallest = _smallest_q(plan, fedavg_total, below, candidate)
            total = _sage_total(plan, upload_interval=smallest)
            return f"- a larger q: upload-interval {smallest} (now {q}) would send {_mib(total)}, under FedAvg."
        below = candidate
    if not candidates:
        return f"- a larger q cannot help: q = {q} already uploads one batch per round."
    total = _sage_total(plan, upload_interval=candidates[-1])
    return (
        f"- a larger q is not enough: even upload-interval {candidates[-1]} (one batch per round) sends {_mib(total)}."
    )


def _smallest_q(plan: Plan, fedavg_total: int, low: int, high: int) -> int:
    """The smallest q in ``(low, high]`` under FedAvg, by bisection (fewer uploads as q grows); ``high`` is."""
    while high - low > 1:
        middle = (low + high) // 2
        if _sage_total(plan, upload_interval=middle) < fedavg_total:
            high = middle
        else:
            low = middle
    return high


def _smaller_dtypes(plan: Plan, fedavg_total: int) -> list[str]:
    current = upload_encoding(plan.training.upload_dtype).itemsize
    lines = []
    for name in UPLOAD_DTYPES:
        if upload_encoding(name).itemsize >= current:
            continue
        total = _sage_total(plan, upload_dtype=name)
        outcome = "under FedAvg" if total < fedavg_total else "still more than FedAvg"
        lines.append(f"- upload-dtype {name}: FSL-SAGE would send {_mib(total)}, {outcome}.")
    return lines


def _cut_size(plan: Plan, fedavg_total: int) -> str:
    """The activation size per sample at which FSL-SAGE would match FedAvg, with a client part of this size."""
    sage_total = plan["fsl-sage"].total_bytes
    activations = activation_share(plan.models, plan.schedule, plan.training)
    values = plan.models.cut_values
    others = sage_total - activations
    if others >= fedavg_total:
        return (
            f"- a later cut: the client model, aux and labels alone take {_mib(others)}; "
            "a cut that makes the client part smaller helps more than a smaller activation."
        )
    break_even = math.floor(values * (fedavg_total - others) / activations)
    return (
        f"- a later cut: the cut now holds {values:,} values per sample ({_mib(activations)} of uploads); with a "
        f"client part of this size, q and upload-dtype, a cut under {break_even:,} values per sample "
        "would send less than FedAvg."
    )


def _memory_changes(plan: Plan) -> list[str]:
    sage, fedavg = plan["fsl-sage"].client_memory, plan["fedavg"].client_memory
    over = sage.peak - fedavg.peak + 1
    lines = [
        f"- the aux model takes {_kib(plan.models.aux)} of the FSL-SAGE client's {_kib(sage.peak)}: an aux "
        f"{_kib(over)} smaller would bring it under FedAvg (choose_aux_variant measures the smaller ones).",
    ]
    if sage.activations > 0:
        lines.append(
            f"- activations take {_kib(sage.activations)} at batch size {plan.training.batch_size}; an earlier "
            "cut keeps fewer layers, and their activations, on the client."
        )
    return lines


def _mib(nbytes: float) -> str:
    return f"{nbytes / MIB:,.2f} MiB"


def _kib(nbytes: float) -> str:
    return f"{nbytes / 1024:,.1f} KiB"
