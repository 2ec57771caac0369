"""Tests of the documentation: its programs run, its links lead somewhere, the README stays short.

Convention: a fenced ``python`` block that follows a line ``<!-- program -->`` in README.md
or docs/*.md is a complete program. It is run as it stands with this interpreter, in an
empty temporary folder, with the repository root on ``PYTHONPATH``, and must exit 0.
Written as ``<!-- program prints="some text" -->``, its standard output must also contain
that text. Blocks without the marker are fragments and are not run; a whole app is shown
instead by including the tested files of ``examples/`` into a page.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fsl_sage_flwr.app.config import run_config_reference
from simulations.paths import PROJECT_DIR

PAGES = [PROJECT_DIR / "README.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]
README_MAX_LINES = 150

PROGRAM = re.compile(r'^<!-- program(?: prints="(?P<prints>[^"]*)")? -->\n```python\n(?P<code>.*?)^```$', re.S | re.M)
FENCED_BLOCK = re.compile(r"^( *)```.*?^\1```$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _programs() -> list[tuple[str, str, str | None]]:
    """Every marked program of every page: (id, code, text it must print or None)."""
    found = []
    for page in PAGES:
        for number, match in enumerate(PROGRAM.finditer(page.read_text()), start=1):
            found.append((f"{page.relative_to(PROJECT_DIR)}#{number}", match["code"], match["prints"]))
    return found


def _relative_links(page: Path) -> list[str]:
    """Link targets of a page that point at files, outside code."""
    text = INLINE_CODE.sub("", FENCED_BLOCK.sub("", page.read_text()))
    targets = [target for target in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]
    return [target for target in targets if not target.startswith("#")]


PROGRAMS = _programs()


def test_the_readme_and_the_own_app_page_show_complete_programs():
    # Prepare / Execute
    pages = {program_id.split("#")[0] for program_id, _, _ in PROGRAMS}
    # Assert: a broken marker would silently leave the pages untested
    assert {"README.md", os.path.join("docs", "own-app.md")} <= pages


@pytest.mark.e2e  # each program is a short run of the real apps: 10 to 20 s on a busy machine
@pytest.mark.parametrize(("program_id", "code", "prints"), PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_every_program_in_the_docs_runs(tmp_path: Path, program_id: str, code: str, prints: str | None):
    # Prepare
    script = tmp_path / "program.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR), "OMP_NUM_THREADS": "1"}
    # Execute
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    # Assert
    assert done.returncode == 0, f"{program_id} failed:\n{done.stderr[-4000:]}"
    if prints is not None:
        assert prints in done.stdout, f"{program_id} did not print {prints!r}:\n{done.stdout[-2000:]}"


def test_the_readme_is_at_most_150_lines():
    # Prepare / Execute
    lines = (PROJECT_DIR / "README.md").read_text().splitlines()
    # Assert
    assert len(lines) <= README_MAX_LINES


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(PROJECT_DIR)) for p in PAGES])
def test_every_relative_link_leads_to_an_existing_file(page: Path):
    # Prepare
    targets = _relative_links(page)
    # Execute
    missing = [target for target in targets if not (page.parent / target.split("#")[0]).exists()]
    # Assert
    assert not missing, f"{page.relative_to(PROJECT_DIR)} links to missing files: {missing}"


def test_the_run_config_page_gets_one_table_row_per_key_from_the_code():
    # Prepare: the hook MkDocs runs on every page
    spec = importlib.util.spec_from_file_location("run_config_hook", PROJECT_DIR / "docs" / "hooks" / "run_config.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = (PROJECT_DIR / "docs" / "run-config.md").read_text()
    # Execute
    rendered = hook.on_page_markdown(page, page=None)
    # Assert: the marker is gone and every key the app reads has its row, with its default
    assert "<!-- run-config-table -->" in page
    assert "<!-- run-config-table -->" not in rendered
    for entry in run_config_reference():
        assert f"| `{entry.key}` | `{hook.format_default(entry.default)}` |" in rendered
