"""The interactive ``sluiceway chat`` used as a person would: in a real terminal (tmux), typing,
watching the answer stream, pressing Ctrl-C mid-answer, recalling history, quitting."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.live import LiveServer

QUESTION = "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november"
PROMPT = "you> "


class Tmux:
    """One detached tmux server (own socket) running one command in a 160x50 pane."""

    def __init__(self, binary: str, socket: Path) -> None:
        self.binary, self.socket = binary, socket

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [self.binary, "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", "chat", "-x", "160", "-y", "50", command)
        self.run("set-option", "-t", "chat", "remain-on-exit", "on")

    def screen(self, escapes: bool = False) -> str:
        return self.run("capture-pane", "-p", "-J", "-t", "chat", *(["-e"] if escapes else []))

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", "chat", "-l", text)

    def press(self, *keys: str) -> None:
        self.run("send-keys", "-t", "chat", *keys)

    def dead(self) -> tuple[bool, str]:
        out = self.run("display-message", "-p", "-t", "chat", "#{pane_dead} #{pane_dead_status}").split()
        return out[0] == "1", (out[1] if len(out) > 1 else "")

    def pid(self) -> int:
        """The pane's process (the command itself: the shell execs it)."""
        return int(self.run("display-message", "-p", "-t", "chat", "#{pane_pid}").strip())

    def exit_status(self, pid: int) -> str | None:
        """The command's exit status once it has ended, else ``None``.

        From tmux once it has reaped the process; before that from the kernel: a loaded machine
        was seen to leave the exited command a zombie, unreaped by tmux (and its pane not marked
        dead) for over 30 s, and ``/proc/<pid>/stat`` holds a zombie's wait status (field 52).
        """
        dead, status = self.dead()
        if dead and status:
            return status
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return None  # reaped: tmux will say it on the next look
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z":
            return None
        wait_status = int(fields[-1])
        return str(os.waitstatus_to_exitcode(wait_status))

    def wait_for(self, what: str, predicate: Callable[[str], bool], within: float = 15.0) -> str:
        deadline = time.monotonic() + within
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")
            time.sleep(0.05)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    binary = shutil.which("tmux")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tmux is not installed (CI=true: scripts/services installs it)")
        pytest.skip("tmux is not installed")
    term = Tmux(binary, tmp_path / "tmux.sock")
    try:
        yield term
    finally:
        subprocess.run([binary, "-S", str(term.socket), "kill-server"], capture_output=True, timeout=10)


def lines(screen: str) -> list[str]:
    return [line.rstrip() for line in screen.splitlines() if line.strip()]


def cancelled_total(live: LiveServer) -> float:
    """The server's ``sluiceway_generations_cancelled_total``, summed over its labels."""
    text = httpx.get(f"{live.url}/metrics").text
    return sum(
        float(m) for m in re.findall(r"^sluiceway_generations_cancelled_total\{[^}]*\} (\S+)$", text, re.M)
    )


def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_interactive_chat_streams_stops_on_ctrl_c_and_goes_on(
    live: LiveServer, tmux: Tmux, tmp_path: Path
) -> None:
    history = tmp_path / "history"
    env = f"env SLUICEWAY_HISTORY={shlex.quote(str(history))} HOME={shlex.quote(str(tmp_path))}"
    command = f"{env} {shlex.quote(sys.executable)} -m sluiceway chat --url {live.url} --model echo-crawl"
    tmux.start(command)
    pid = tmux.pid()
    tmux.wait_for("the prompt", lambda s: lines(s)[-1:] == [PROMPT.strip()])
    cancelled_before = cancelled_total(live)

    # Ask; the answer streams in word by word (250 ms a word).
    tmux.type(QUESTION)
    tmux.press("Enter")
    screen = tmux.wait_for("the answer to start", lambda s: s.count("alpha bravo") >= 2)
    answer = lines(screen)[-1]
    assert answer.startswith("alpha bravo") and not answer.endswith("november"), screen
    assert httpx.get(f"{live.url}/healthz").json()["active_streams"] == 1

    # Ctrl-C mid-answer: stopped, the server cancels, the prompt comes back.
    tmux.press("C-c")
    screen = tmux.wait_for(
        "the prompt after [stopped]", lambda s: lines(s)[-2:] == ["[stopped]", PROMPT.strip()]
    )
    partial = lines(screen)[-3]
    assert partial.startswith("alpha bravo") and "november" not in partial, screen
    assert wait_until(lambda: httpx.get(f"{live.url}/healthz").json()["active_streams"] == 0)
    assert wait_until(lambda: cancelled_total(live) == cancelled_before + 1)

    # Ask again: a whole answer, then the dim stats line.
    tmux.type("one two three")
    tmux.press("Enter")
    screen = tmux.wait_for("the second answer", lambda s: "TTFT" in s and lines(s)[-1] == PROMPT.strip())
    assert lines(screen)[-3:-1] == ["one two three", lines(screen)[-2]]
    assert re.fullmatch(r"TTFT \d+ ms · 3 tokens · [\d.]+ tokens/s", lines(screen)[-2])
    assert "\x1b[2mTTFT" in tmux.screen(escapes=True)  # dim

    # Line editing with history: Up recalls the last question.
    tmux.press("Up")
    tmux.wait_for("the recalled question", lambda s: lines(s)[-1] == PROMPT + "one two three")
    tmux.press("Enter")
    tmux.wait_for("the third answer", lambda s: s.count("TTFT") == 2 and lines(s)[-1] == PROMPT.strip())

    # Ctrl-C at the prompt quits with status 0 and saves the history.
    tmux.press("C-c")
    status: list[str | None] = [None]

    def ended() -> bool:
        status[0] = tmux.exit_status(pid)
        return status[0] is not None

    # Generous: interpreter shutdown and the tmux calls per poll are slow on a loaded 2-core machine.
    assert wait_until(ended, within=30), tmux.screen()
    assert status[0] == "0"
    assert "one two three" in history.read_text()
