"""svc on a real terminal: the Rich renderer drawn on a pseudo-terminal, with real restic.

Everywhere else the renderers are driven through pipes (plain) or ``--json``; here stdout and
stderr are the slave side of a pty, as at a user's shell, so ``renderer_for`` picks Rich and
the live bars are drawn while restic runs.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.services import test_backup as tb
from tests.services.test_backup import SVC, SvcWorld, needs_restic, restic_template  # noqa: F401

pytestmark = [pytest.mark.integration, needs_restic]

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def world(restic_template: Path, tmp_path: Path, state_dir: Path) -> SvcWorld:  # noqa: F811
    return tb.make_world(tmp_path / "world", restic_template, state_dir)


def on_pty(argv: list[str], env: dict[str, str], timeout: float = 120.0) -> tuple[int, str]:
    """Run ``argv`` with stdout and stderr on one 120x40 pty; exit code and all it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, close_fds=True
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, b"".join(chunks).decode(errors="replace")
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the slave side has gone
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def env_for(world: SvcWorld) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOMEOPS_", "SVC_"))}
    env.update(
        HOMEOPS_STATE_DIR=str(world.state),
        TERM="xterm-256color",
        COLUMNS="120",
        # restic writes a status line this often to a pipe (its default is rarer there).
        RESTIC_PROGRESS_FPS="20",
    )
    env.pop("NO_COLOR", None)
    return env


def test_backup_and_restore_draw_live_bars_on_a_terminal(world: SvcWorld) -> None:
    src = world.root / "src"
    src.mkdir()
    for n in range(8):
        (src / f"f{n}.bin").write_bytes(os.urandom(4 << 20))
    # A file name from the backed-up data that is a terminal command (clear the screen, set
    # the window title): it must be shown escaped, never sent to the terminal.
    hostile = src / "evil\x1b[2J\x1b]0;PWNED\x07.txt"
    hostile.write_text("1")
    world.service("app", paths=[str(src)])
    world.write()
    env = env_for(world)

    code, drawn = on_pty([SVC, "--config", str(world.config), "backup", "local", "app"], env)
    text = ANSI.sub("", drawn)
    assert code == 0, drawn
    assert "\x1b[" in drawn  # Rich drew: colours and cursor moves, not plain lines
    assert "━" in text  # the bar
    assert re.search(r"app\s+━+\s+100%", text), text  # finished at 100%
    assert re.search(r"ok snapshot [0-9a-f]{8}", text), text
    [job] = world.jobs()
    assert job.result is not None and job.result["state"] == "ok"

    # A target whose name is Rich markup is printed as it is, not parsed (a "[/]" there
    # ended the command with MarkupError).
    target = world.root / "restored [/]x[bold]"
    hostile.write_text("22")  # now it differs from the snapshot: listed as changed
    code, drawn = on_pty(
        [SVC, "--config", str(world.config), "restore", "local", "app", "--target", str(target)],
        env,
    )
    text = ANSI.sub("", drawn)
    assert code == 0, drawn
    assert "MarkupError" not in text
    assert "[/]x[bold]" in text
    assert "\x1b]0;PWNED" not in drawn and "\x1b[2J" not in drawn
    assert "changed: " in text and "evil\\x1b[2J\\x1b]0;PWNED\\x07.txt" in text
    restored = sorted(p.name for p in target.rglob("*.bin"))
    assert restored == [f"f{n}.bin" for n in range(8)]
    assert (target / hostile.relative_to("/")).read_text() == "1"
