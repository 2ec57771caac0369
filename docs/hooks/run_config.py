"""MkDocs hook: fills the run-config page's table from the code at build time."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- run-config-table -->"


def _cell(text: str) -> str:
    """Escape what would break a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def format_default(value: Any) -> str:
    """A default as one would write it in ``--run-config``: strings quoted, booleans lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


def run_config_table() -> str:
    """The Markdown table of every run-config key: its default, meaning and the settings record that checks it."""
    # Imported here, so that building the other pages does not need torch.
    from fsl_sage_flwr.app.config import run_config_reference

    rows = ["| key | default | meaning | checked by |", "|---|---|---|---|"]
    for entry in run_config_reference():
        default = _cell(format_default(entry.default))
        rows.append(f"| `{entry.key}` | `{default}` | {_cell(entry.help)} | `{entry.owner}` |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Replace the marker on the run-config page with the generated table."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, run_config_table())
