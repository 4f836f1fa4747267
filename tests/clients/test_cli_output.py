"""The CLI's output layer: one Output chosen from --json, and rich only for tables."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conveyor.client.models import WorkflowStatus
from conveyor.client.output import JsonOutput, TableOutput, output_for, visible

#: Runs conveyor.cli.main with rich made unimportable, as in an install without the `cli` extra.
WITHOUT_RICH = textwrap.dedent(
    """
    import sys
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        del sys.modules[name]
    sys.modules["rich"] = None  # import rich -> ModuleNotFoundError
    from conveyor.cli import main
    code = main(sys.argv[1:])
    print("rich imported:", any(m.startswith("rich.") for m in sys.modules))
    sys.exit(code)
    """
)


def conveyor_without_rich(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_RICH, *argv], capture_output=True, text=True, timeout=120
    )


def test_json_output_works_without_rich_and_tables_ask_for_the_cli_extra() -> None:
    # Port 9 (discard) on localhost: nothing listens, so the request fails as unreachable.
    as_json = conveyor_without_rich("count", "--json", "--coordinator", "127.0.0.1:9", "--timeout", "5")
    as_table = conveyor_without_rich("count", "--coordinator", "127.0.0.1:9", "--timeout", "5")

    assert as_json.returncode == 4, as_json.stderr  # EXIT_UNAVAILABLE: it got as far as calling
    assert "cannot reach the coordinator at 127.0.0.1:9" in as_json.stderr
    assert "rich imported: False" in as_json.stdout
    assert as_table.returncode == 2, as_table.stderr
    assert "pip install 'conveyor[cli]'" in as_table.stderr
    assert "cannot reach" not in as_table.stderr  # refused before any request


def test_the_output_is_picked_from_the_json_flag_alone() -> None:
    assert isinstance(output_for(json=True), JsonOutput)
    assert isinstance(output_for(json=False), TableOutput)


def test_counts_as_json_and_as_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    by_status = {WorkflowStatus.RUNNING: 2, WorkflowStatus.COMPLETED: 3}
    JsonOutput().counts(by_status)
    assert capsys.readouterr().out == '{\n  "running": 2,\n  "completed": 3\n}\n'
    TableOutput().counts(by_status)
    table = capsys.readouterr().out
    assert "running" in table and "completed" in table and "total" in table and "5" in table


def test_visible_writes_control_characters_out() -> None:
    assert visible("a\x1b[31mb\nc") == "a\\x1b[31mb\\nc"
    assert visible("a\nb\tc", multiline=True) == "a\nb\tc"
