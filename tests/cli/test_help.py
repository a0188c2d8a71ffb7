"""``sluiceway --help`` and the help of every client-side subcommand are complete."""

from __future__ import annotations

import pytest

from sluiceway.cli.main import main

FLAGS = {
    "chat": [
        "PROMPT",
        "--url",
        "--model",
        "--system",
        "--max-tokens",
        "--json",
        "--conversation",
        "--no-stats",
    ],
    "bench": [
        "URL",
        "--concurrency",
        "--requests",
        "--max-seconds",
        "--protocol",
        "--model",
        "--prompt",
        "--max-tokens",
        "--json",
        "--allow-remote",
    ],
    "doctor": ["URL", "--model", "--words", "--heartbeat-wait", "--timeout", "--json"],
}


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys)
    for command in ("serve", "chat", "bench", "doctor"):
        assert f"    {command} " in text


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_subcommand_help_names_every_flag_and_the_exit_codes(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(capsys, command)
    for flag in FLAGS[command]:
        assert flag in text
    assert "exit codes:" in text and "example" in text
    assert all(len(line) <= 100 for line in text.splitlines())


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: sluiceway" in capsys.readouterr().err
