"""A plan as a Markdown table: bytes per round and over the run, client and server memory."""

from __future__ import annotations

from fsl_sage_flwr.planning.planner import Plan

_MIB = 1024 * 1024
_KIB = 1024


def plan_table(plan: Plan) -> str:
    """Every algorithm's forecast as a Markdown table, FedAvg's run total as the yardstick."""
    fedavg_total = plan["fedavg"].total_bytes
    lines = [
        "| algorithm | down MiB/round | up MiB/round | run MiB | vs FedAvg | client peak KiB "
        "| params | grads | optimizer | activations | server KiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in plan.algorithms.values():
        memory = item.client_memory
        lines.append(
            f"| {item.algorithm} | {item.down_per_round / _MIB:,.3f} | {item.up_per_round / _MIB:,.3f} "
            f"| {item.total_bytes / _MIB:,.2f} | {item.total_bytes / fedavg_total:.0%} | {memory.peak / _KIB:,.1f} "
            f"| {memory.parameters / _KIB:,.1f} | {memory.gradients / _KIB:,.1f} | {memory.optimizer / _KIB:,.1f} "
            f"| {memory.activations / _KIB:,.1f} | {item.server_memory / _KIB:,.1f} |"
        )
    return "\n".join(lines)


def plan_summary(plan: Plan) -> str:
    """One line of what was planned: clients, samples, rounds, and the settings that set the bytes."""
    schedule, training = plan.schedule, plan.training
    samples = schedule.samples
    spread = f"{min(samples)}-{max(samples)}" if min(samples) != max(samples) else f"{samples[0]}"
    return (
        f"{len(samples)} clients ({spread} samples each), {schedule.sampled_per_round} trained per round, "
        f"{schedule.num_server_rounds} rounds; B = {training.batch_size}, E = {training.local_epochs}, "
        f"q = {training.upload_interval}, l = {plan.alignment.interval}, upload-dtype {training.upload_dtype}; "
        f"cut {plan.models.cut_shape}, client {plan.models.client / _KIB:,.1f} KiB, "
        f"server {plan.models.server / _KIB:,.1f} KiB, aux {plan.models.aux / _KIB:,.1f} KiB"
    )
