"""Pure quoting for remote shells (core/ssh/shell.py) and the PowerShell killer's builder.

No Windows runs here, so the PowerShell side is tested as strings: a table of exact
scripts, a reader that follows PowerShell's rule for single-quoted strings (any of the five
single-quote characters ends one unless the next is also one), and the encoding layer.
The POSIX side is proved against a real sshd in test_runner_ssh.py.
"""

from __future__ import annotations

import base64
import re
import shlex

import pytest

from homeops.core.ssh import SshTarget, posix_command, powershell_command, remote_command
from homeops.core.ssh.kill import (
    _PS_KILL_BODY,
    PS_KILL_MATCH_CHARS,
    fallback_outcome,
    powershell_kill_command,
    powershell_kill_script,
)
from homeops.core.ssh.shell import (
    POWERSHELL_PREFIX,
    decode_powershell,
    encode_powershell,
    powershell_literal,
    powershell_script,
)

PS_QUOTES = "'\u2018\u2019\u201a\u201b"
CMD_MAX = 8191  # cmd.exe's command line limit
TRAILER = (
    "$homeopsOk = $?\n"
    "if ($null -ne $LASTEXITCODE) { exit $LASTEXITCODE }\n"
    "if ($homeopsOk) { exit 0 }\n"
    "exit 1\n"
)

LITERALS = [
    pytest.param("", "''", id="empty"),
    pytest.param("plain", "'plain'", id="plain"),
    pytest.param("it's", "'it''s'", id="apostrophe"),
    pytest.param("''", "''''''", id="two-apostrophes"),
    pytest.param('say "hi"', "'say \"hi\"'", id="double-quotes-stay"),
    pytest.param("$(Remove-Item C:\\)", "'$(Remove-Item C:\\)'", id="subexpression"),
    pytest.param("$env:PATH", "'$env:PATH'", id="variable"),
    pytest.param("`n`$", "'`n`$'", id="backticks"),
    pytest.param("a\nb\r\nc", "'a\nb\r\nc'", id="newlines"),
    pytest.param("a;b|c&d", "'a;b|c&d'", id="operators"),
    pytest.param("\u2018x\u2019", "'\u2018\u2018x\u2019\u2019'", id="smart-quotes"),
    pytest.param("\u201aa\u201b", "'\u201a\u201aa\u201b\u201b'", id="low-and-reversed-quotes"),
    pytest.param("日本語 🚀 é", "'日本語 🚀 é'", id="unicode"),
    pytest.param("C:\\Program Files\\x.exe", "'C:\\Program Files\\x.exe'", id="windows-path"),
]


@pytest.mark.parametrize(("value", "literal"), LITERALS)
def test_powershell_literal(value: str, literal: str) -> None:
    assert powershell_literal(value) == literal


def _read_single_quoted_words(line: str) -> list[str]:
    """Words of ``& 'a' 'b' ...`` read the way PowerShell's tokenizer reads them."""
    assert line.startswith("& ")
    words: list[str] = []
    i = 2
    while i < len(line):
        assert line[i] in PS_QUOTES, f"expected a quote at {i}: {line[i:]!r}"
        i += 1
        word = []
        while True:
            c = line[i]
            i += 1
            if c in PS_QUOTES:
                if i < len(line) and line[i] in PS_QUOTES:
                    word.append(line[i])
                    i += 1
                    continue
                break
            word.append(c)
        words.append("".join(word))
        if i < len(line):
            assert line[i] == " "
            i += 1
    return words


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["Get-Process"], id="cmdlet"),
        pytest.param(["C:\\Program Files\\Git\\bin\\git.exe", "log", "-1"], id="path-with-space"),
        pytest.param(["cmd", *[p.values[0] for p in LITERALS]], id="every-hostile-word"),
        pytest.param(["x", "'\u2018'\u2019\u201a'\u201b"], id="mixed-quote-run"),
    ],
)
def test_powershell_script_reads_back_as_the_argv(argv: list[str]) -> None:
    script = powershell_script(argv)
    call, sep, rest = script.partition("\n$homeopsOk = $?\n")
    assert _read_single_quoted_words(call) == argv
    # Nothing of the arguments leaks outside the call line: the rest never changes.
    assert sep + rest == powershell_script(["x"]).partition("\n")[1] + TRAILER


def test_powershell_script_exact_text_and_exit_status() -> None:
    assert powershell_script(["git", "it's"]) == "& 'git' 'it''s'\n" + TRAILER


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("Get-Date", id="ascii"),
        pytest.param("Write-Output 'é 日本 🚀'\n'a''b'", id="unicode-multiline"),
    ],
)
def test_encoded_command_is_utf16le_base64_with_only_safe_characters(script: str) -> None:
    line = encode_powershell(script)
    assert line.split(" ")[:4] == list(POWERSHELL_PREFIX)
    encoded = line.split(" ")[4]
    assert base64.b64decode(encoded).decode("utf-16-le") == script
    # Only base64 characters: cmd.exe, PowerShell or a POSIX shell pass them through as-is.
    assert re.fullmatch(r"[A-Za-z0-9+/=]*", encoded)
    assert decode_powershell(line) == script
    assert shlex.split(line) == line.split(" ")


def test_encode_refuses_an_empty_script() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_powershell(" \n")


def test_decode_refuses_other_lines() -> None:
    with pytest.raises(ValueError, match="not an encoded PowerShell command"):
        decode_powershell("powershell -Command Get-Date")


def test_powershell_command_is_the_encoded_script() -> None:
    argv = ["Get-Item", "$(evil)"]
    assert decode_powershell(powershell_command(argv)) == powershell_script(argv)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        pytest.param(["ls", "-l"], "ls -l", id="plain"),
        pytest.param(["echo", ""], "echo ''", id="empty"),
        pytest.param(["echo", "it's"], "echo 'it'\"'\"'s'", id="apostrophe"),
        pytest.param(["echo", "$(id)", "`id`"], "echo '$(id)' '`id`'", id="expansions"),
        pytest.param(["echo", "a\nb"], "echo 'a\nb'", id="newline"),
    ],
)
def test_posix_command(argv: list[str], line: str) -> None:
    assert posix_command(argv) == line
    assert shlex.split(line) == argv


@pytest.mark.parametrize("func", [posix_command, powershell_command, powershell_script])
def test_builders_refuse_a_string_or_nothing(func) -> None:
    with pytest.raises(TypeError):
        func("echo hi")
    with pytest.raises(ValueError, match="empty"):
        func([])


def test_remote_command_follows_the_target_shell() -> None:
    argv = ["echo", "a b"]
    assert remote_command(argv, SshTarget("h", "u").remote_shell) == "echo 'a b'"
    windows = SshTarget("h", "u", remote_shell="powershell")
    assert decode_powershell(remote_command(argv, windows.remote_shell)) == (
        powershell_script(argv)
    )


def test_remote_shell_is_validated() -> None:
    with pytest.raises(ValueError, match="remote_shell"):
        SshTarget("h", "u", remote_shell="cmd")  # type: ignore[arg-type]


# --- the PowerShell fallback killer (built, never run here) ---

CONN = "127.0.0.1 50022 127.0.0.1 22"
OWN = "127.0.0.1 50023 127.0.0.1 22"


def test_kill_script_carries_inputs_as_literals_then_the_body() -> None:
    script = powershell_kill_script(CONN, OWN, "ping -n 100 it's")
    head = script.split("\n")[:3]
    assert head == [
        f"$conn = '{CONN}'",
        f"$own = '{OWN}'",
        "$want = 'ping -n 100 it''s'",
    ]
    body = "\n".join(line.lstrip() for line in _PS_KILL_BODY.splitlines()) + "\n"
    assert script.endswith(body)


def test_kill_script_finds_the_session_by_tcp_and_kills_its_tree() -> None:
    body = _PS_KILL_BODY
    # The session is found through the connection's TCP endpoints, in SSH_CONNECTION order.
    assert "Get-NetTCPConnection -RemoteAddress $c[0] -RemotePort $c[1]" in body
    assert "-LocalAddress $c[2] -LocalPort $c[3]" in body
    assert "if ($env:SSH_CONNECTION -eq $own)" in body
    assert "taskkill.exe /PID ([int]$h.ProcessId) /T /F" in body
    # The killer never counts itself or its ancestors as a candidate.
    assert "$mine" in body and "$PID" in body
    # Exit codes shared with the POSIX killer mean the same outcomes.
    for code in ("exit 3", "exit 4", "exit 6", "exit 0"):
        assert code in body
    assert [str(fallback_outcome(c)) for c in (0, 3, 4, 6)] == [
        "killed",
        "none-left",
        "ambiguous",
        "failed",
    ]


def test_kill_script_braces_balance() -> None:
    # A cheap structural check of a script no PowerShell here can parse.
    body = re.sub(r"'[^']*'", "''", _PS_KILL_BODY)
    for open_, close in ("{}", "()", "[]"):
        assert body.count(open_) == body.count(close), open_


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(powershell_command(["robocopy", "x" * 20000]), id="huge-encoded"),
        pytest.param("echo " + "'" * 5000, id="all-quotes"),
        pytest.param("echo " + "\u2019" * 3000 + "é" * 3000, id="smart-quotes-unicode"),
    ],
)
def test_kill_command_fits_cmd_exe_for_a_huge_command(command: str) -> None:
    line = powershell_kill_command(CONN, OWN, command)
    assert len(line) <= CMD_MAX
    script = decode_powershell(line)
    # Only the command's end is matched: its last characters, quoted, within the limit.
    want_line = script.split("\n")[2]
    literal = want_line.removeprefix("$want = ")
    assert len(literal) <= PS_KILL_MATCH_CHARS + 2
    want = _read_single_quoted_words("& " + literal)[0]
    assert command.endswith(want)
    assert len(want) >= PS_KILL_MATCH_CHARS // 2 - 1
