"""Tests of the comparison's summary, table, plots and progress line (no Flower run)."""

from __future__ import annotations

import json

from simulations.compare import Progress
from simulations.compare_report import GIB, markdown_table, summarise, target_value, write_outputs


def _rows(values: list[float], bytes_per_round: int, seconds: float = 2.0, metric: str = "accuracy") -> list[dict]:
    return [
        {
            "round": r,
            metric: a,
            "cumulative_bytes": r * bytes_per_round,
            "round_seconds": seconds,
            "client_peak_memory_bytes": 1024 * 1024 * r,
            "server_memory_bytes": 2 * 1024 * 1024,
        }
        for r, a in enumerate(values)
    ]


def test_summary_finds_the_bytes_to_reach_the_target():
    # Prepare: A reaches 0.8 at round 2, B never does
    rows = {"a": _rows([0.1, 0.5, 0.8, 0.9], GIB // 4), "b": _rows([0.1, 0.6, 0.7, 0.75], GIB)}
    # Execute
    summary = {s.strategy: s for s in summarise(rows, target=0.8)}
    # Assert
    assert summary["a"].gib_to_target == 0.5
    assert summary["b"].gib_to_target is None
    assert summary["a"].best == 0.9 and summary["b"].final == 0.75 and summary["a"].metric == "accuracy"
    assert summary["b"].total_gib == 3.0
    assert summary["a"].client_peak_mib == 3.0 and summary["a"].server_mib == 2.0


def test_outputs_hold_table_csv_and_plots(tmp_path):
    # Execute
    rows = {"fsl-sage": _rows([0.1, 0.9], 1000), "fedavg": _rows([0.1, 0.85], 5000)}
    summaries = write_outputs(tmp_path, rows, target=0.85, command="python -m simulations.compare")
    # Assert
    table = markdown_table(summaries, 0.85)
    assert "| fsl-sage | 0.9000 |" in table and "not reached" not in table
    assert (tmp_path / "summary.md").read_text().count("| fedavg |") == 1
    assert (tmp_path / "summary.csv").read_text().splitlines()[0].startswith("strategy,final_accuracy")
    for name in ("accuracy_vs_rounds.png", "accuracy_vs_gib.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_language_model_comparison_ranks_by_perplexity_lower_first(tmp_path):
    # Prepare: rows of a split whose metric is perplexity (no accuracy); A gets lower
    rows = {
        "a": _rows([256.0, 40.0, 12.0, 10.0], GIB // 4, metric="perplexity"),
        "b": _rows([256.0, 60.0, 30.0, 20.0], GIB // 2, metric="perplexity"),
    }
    # Execute
    target = target_value(rows, fraction=0.8)
    summaries = write_outputs(tmp_path, rows, target=target, command="python -m simulations.compare")
    # Assert: the target is the best perplexity over 0.8, reached by A only, at round 2
    summary = {s.strategy: s for s in summaries}
    assert target == 12.5
    assert summary["a"].metric == "perplexity" and summary["a"].best == 10.0 and summary["b"].best == 20.0
    assert summary["a"].gib_to_target == 0.5 and summary["b"].gib_to_target is None
    header = (tmp_path / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("strategy,final_perplexity,best_perplexity,gib_to_target")
    assert "| final perplexity | best perplexity | GiB to perplexity 12.5 |" in markdown_table(summaries, target)
    for name in ("perplexity_vs_rounds.png", "perplexity_vs_gib.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_follows_the_results_file_not_the_log(tmp_path, capsys):
    # Prepare: the second of two strategies, 4 rounds each; its results file has
    # rounds 0 and 1 and half of round 2's line
    path = tmp_path / "results.jsonl"
    progress = Progress(["a", "b"], rounds=4)
    progress.begin(1, path)
    progress.poll("round 3: test accuracy 0.9999")  # a log line alone moves nothing
    rows = "".join(json.dumps({"round": r, "accuracy": a}) + "\n" for r, a in [(0, 0.1), (1, 0.42)])
    path.write_text(rows + '{"round": 2, "accu')
    # Execute
    progress.poll()
    progress.poll()  # the file did not change: nothing new is shown
    # Assert: one line for round 1, none for the log line's round 3 or the partial round 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[2/2 b] round 0/4;")
    assert [line.split(";")[0] for line in lines[1:]] == ["[2/2 b] round 1/4, accuracy 0.4200"]
    assert progress.done_rounds == 5
