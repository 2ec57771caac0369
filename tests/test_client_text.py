"""Client-controlled text reaches log lines and errors as one bounded, escaped line."""

from __future__ import annotations

import logging

import pytest
from flwr.app import Error, Message, RecordDict

from fsl_sage_flwr.transport.keys import REPLY_STATUS_KEY
from fsl_sage_flwr.transport.log_text import client_text
from simulations.testing import constant_weights, reply_from, train_reply_content, two_node_fsl_sage

FORGED = "ok\nINFO : forged line" + "x" * 10**6


class _Records(logging.Handler):
    """Keep every record Flower's logger emits."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records():
    handler = _Records()
    logging.getLogger("flwr").addHandler(handler)
    yield handler.records
    logging.getLogger("flwr").removeHandler(handler)


def _error_reply(node_id: int, reason: str) -> Message:
    metadata = reply_from(node_id, RecordDict()).metadata
    return Message(error=Error(code=0, reason=reason), metadata=metadata)


def test_a_forged_error_reason_makes_one_bounded_log_line(records):
    # Prepare
    strategy, _ = two_node_fsl_sage()
    # Execute
    contents = strategy.reply_contents([_error_reply(101, FORGED)])
    # Assert
    lines = [r.getMessage() for r in records if "dropped reply" in r.getMessage()]
    assert contents == []
    assert len(lines) == 1
    assert "\n" not in lines[0]
    assert len(lines[0]) < 400
    assert "ok\\nINFO : forged line" in lines[0]
    assert "more characters cut" in lines[0]


def test_a_forged_error_reason_is_bounded_in_the_run_failure(records):
    # Prepare
    strategy, _ = two_node_fsl_sage()
    # Execute
    with pytest.raises(RuntimeError) as failure:
        for server_round in range(1, strategy.max_rounds_without_replies + 1):
            strategy.aggregate_replies(server_round, strategy.reply_contents([_error_reply(101, FORGED)]))
    # Assert
    message = str(failure.value)
    assert "\n" not in message
    assert len(message) < 1500
    assert "error reply: ok\\nINFO : forged line" in message


def test_a_forged_failure_status_in_a_reply_makes_one_bounded_log_line(records):
    # Prepare
    strategy, split = two_node_fsl_sage()
    content = train_reply_content(101, constant_weights(split, 1.0), 40)
    content.config_records[REPLY_STATUS_KEY]["code"] = 1
    content.config_records[REPLY_STATUS_KEY]["message"] = FORGED
    # Execute
    strategy.aggregate_replies(1, [(101, content)])
    # Assert
    lines = [r.getMessage() for r in records if "dropped reply" in r.getMessage()]
    assert len(lines) == 1
    assert "\n" not in lines[0]
    assert len(lines[0]) < 400
    assert "client reports failure: ok\\nINFO : forged line" in lines[0]


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("plain text", "plain text"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("nul\x00 del\x7f line\u2028", "nul\\x00 del\\x7f line\\u2028"),
        ("abcdef", "abc... [3 more characters cut]"),
    ],
)
def test_client_text_escapes_control_characters_and_bounds_length(value, want):
    # Execute
    got = client_text(value, limit=3 if value == "abcdef" else 200)
    # Assert
    assert got == want
