"""Tests for where a run may write: inside output-dir, never over an earlier run."""

from __future__ import annotations

import pytest

from fsl_sage_flwr.app.results import ResultsWriter, RunFolderError, refuse_links, run_folder


def test_a_plain_nested_run_name_lands_inside_output_dir(tmp_path):
    # Execute
    folder = run_folder(str(tmp_path), "exp/seed-0", "fsl-sage")
    # Assert
    assert folder == tmp_path / "exp" / "seed-0"
    assert not folder.exists()  # nothing is created before the run is checked


def test_a_name_with_dot_dot_is_refused_even_when_it_stays_inside(tmp_path):
    # "a/../b" resolves inside output-dir; the name itself is refused, so a later
    # change of the folder's links cannot turn it into a way out.
    with pytest.raises(RunFolderError, match=r"no '\.\.'"):
        run_folder(str(tmp_path), "a/../b", "fsl-sage")


def test_a_link_inside_output_dir_that_points_outside_is_refused(tmp_path):
    # Prepare: output-dir/escape -> a folder beside output-dir
    output, victim = tmp_path / "out", tmp_path / "victim"
    output.mkdir()
    victim.mkdir()
    (output / "escape").symlink_to(victim, target_is_directory=True)
    # Execute / Assert: the name is plain, only its resolved path leaves output-dir
    with pytest.raises(RunFolderError, match="outside output-dir"):
        run_folder(str(output), "escape/run", "fsl-sage")


def test_a_relative_output_dir_is_taken_under_the_home_folder(tmp_path, monkeypatch):
    # Prepare
    monkeypatch.setenv("HOME", str(tmp_path))
    # Execute
    folder = run_folder("results", "r", "fsl-sage")
    # Assert
    assert folder == tmp_path / "results" / "r"


def test_a_fresh_writer_refuses_a_folder_with_earlier_rows_and_leaves_them(tmp_path):
    # Prepare
    (tmp_path / ResultsWriter.FILE_NAME).write_text('{"round": 0}\n')
    # Execute
    with pytest.raises(RunFolderError, match="earlier run"):
        ResultsWriter(tmp_path)
    # Assert
    assert (tmp_path / ResultsWriter.FILE_NAME).read_text() == '{"round": 0}\n'


def test_a_writer_refuses_a_results_file_linked_outside_and_leaves_the_target(tmp_path):
    # Prepare: an empty file outside the run folder, linked in as results.jsonl
    outside = tmp_path / "outside.txt"
    outside.write_text("")
    folder = tmp_path / "out" / "run"
    folder.mkdir(parents=True)
    (folder / ResultsWriter.FILE_NAME).symlink_to(outside)
    # Execute / Assert
    with pytest.raises(RunFolderError, match="results.jsonl is a symbolic link"):
        ResultsWriter(folder).write({"round": 0})
    assert outside.read_text() == ""


@pytest.mark.parametrize("name", ["checkpoint.pt", "client-state", "client-state/0.0.pt", "run.lock"])
def test_a_link_where_a_run_writes_is_refused_naming_it(tmp_path, name):
    # Prepare
    outside = tmp_path / "outside.pt"
    outside.write_text("keep")
    folder = tmp_path / "out" / "run"
    (folder / "client-state").mkdir(parents=True)
    if name == "client-state":
        (folder / name).rmdir()
    (folder / name).symlink_to(outside)
    # Execute / Assert
    with pytest.raises(RunFolderError, match=f"{name} is a symbolic link"):
        refuse_links(folder)
    assert outside.read_text() == "keep"


def test_a_run_refuses_a_results_link_before_writing_and_leaves_the_target(tmp_path):
    from fsl_sage_flwr.app.client_app import app as client_app
    from fsl_sage_flwr.app.server_app import app as server_app
    from simulations.in_process import run_in_process
    from simulations.testing import app_config

    # Prepare
    outside = tmp_path / "outside.txt"
    outside.write_text("")
    config = app_config(tmp_path / "out", num_server_rounds=1, min_available_nodes=1)
    folder = tmp_path / "out" / "run"
    folder.mkdir(parents=True)
    (folder / ResultsWriter.FILE_NAME).symlink_to(outside)
    # Execute / Assert
    with pytest.raises(RunFolderError, match="results.jsonl is a symbolic link"):
        run_in_process(server_app, client_app, config, num_nodes=1)
    assert outside.read_text() == ""
    assert sorted(p.name for p in folder.iterdir()) == [ResultsWriter.FILE_NAME]
