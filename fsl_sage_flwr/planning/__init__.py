"""Know before you run: each algorithm's bytes and memory on a split, forecast without training."""

from fsl_sage_flwr.planning.advice import Verdict, verdict
from fsl_sage_flwr.planning.footprint import ClientMemory
from fsl_sage_flwr.planning.planner import ALGORITHMS, AlgorithmPlan, Plan, plan
from fsl_sage_flwr.planning.report import plan_summary, plan_table
from fsl_sage_flwr.planning.traffic import ModelBytes, RoundBytes, Schedule

__all__ = [
    "ALGORITHMS",
    "AlgorithmPlan",
    "ClientMemory",
    "ModelBytes",
    "Plan",
    "RoundBytes",
    "Schedule",
    "Verdict",
    "plan",
    "plan_summary",
    "plan_table",
    "verdict",
]
