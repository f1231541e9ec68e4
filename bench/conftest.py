"""Shared by the bench suites: the `report` fixture.

pytest swallows what a test prints unless `-s` is given, and a ratio table printed mid-run is
lost among the progress dots. A suite that wants its table seen asks for `report` and calls
`report(line, ...)`: the lines are printed once, at the end of the session, in a "bench report"
section of pytest's terminal summary, whatever the flags (`-s` or not, `-q`, pytest-benchmark's
own options). Lines from several tests and several suites appear in the order they were reported.

    def test_report(report):
        report("game   C/ref", *(f"{game:<6} {ratio:.0f}x" for game, ratio in ratios.items()))
"""

import pytest

_LINES: list[str] = []


@pytest.fixture(scope="session")
def report():
    """report(*lines): print these lines in the terminal summary at the end of the session
    (a line may hold newlines; each is printed as it is)."""

    def add(*lines: str) -> None:
        _LINES.extend(str(line) for line in lines)

    return add


def pytest_terminal_summary(terminalreporter):
    if _LINES:
        terminalreporter.section("bench report")
        for line in _LINES:
            terminalreporter.write_line(line)
