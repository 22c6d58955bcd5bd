"""The windows domain's PowerShell builders and parsers (CONTRACTS.md §1).

No PowerShell runs here: builders are checked as text (and for surviving the encoding the
SSH seam applies), parsers against recorded outputs in tests/windows/cases/.
"""

import json
from pathlib import Path

import pytest

from homeops.core.errors import OperationalError, UsageError
from homeops.core.ssh.shell import decode_powershell, encode_powershell
from homeops.windows import powershell as ps

CASES = Path(__file__).parent / "cases"


def _cases(name):
    return [pytest.param(c, id=c["id"]) for c in json.loads((CASES / name).read_text())]


@pytest.mark.parametrize("case", _cases("desktop_locked.json"))
def test_parse_desktop_locked(case):
    if "error" in case:
        with pytest.raises(OperationalError, match=case["error"]):
            ps.parse_desktop_locked(case["stdout"])
    else:
        assert ps.parse_desktop_locked(case["stdout"]) is case["want"]


def test_desktop_locked_script_is_the_contracts_probe():
    script = ps.desktop_locked_script()
    assert "Get-Process -Name LogonUI -ErrorAction SilentlyContinue" in script
    assert decode_powershell(encode_powershell(script)) == script


@pytest.mark.parametrize(
    ("stdout", "want"),
    [
        pytest.param("listening\r\n", True, id="yes"),
        pytest.param("not-listening\r\n", False, id="no"),
    ],
)
def test_port_listening(stdout, want):
    assert "Get-NetTCPConnection -LocalPort 9323 -State Listen" in ps.port_listening_script(9323)
    assert ps.parse_port_listening(stdout) is want


@pytest.mark.parametrize("port", [0, 65536, -1, True])
def test_bad_ports_are_refused(port):
    with pytest.raises(UsageError, match="port must be 1-65535"):
        ps.port_listening_script(port)


def test_firewall_rule_quotes_its_name_and_is_idempotent():
    rule = ps.FirewallRule("Aloha 7887 'GUI'; Remove-Item C:\\", 7887)
    script = ps.firewall_rule_script(rule)
    quoted = "'Aloha 7887 ''GUI''; Remove-Item C:\\'"
    assert f"Get-NetFirewallRule -DisplayName {quoted} -ErrorAction SilentlyContinue" in script
    assert f"Set-NetFirewallRule -DisplayName {quoted} -Enabled True" in script
    assert (
        f"New-NetFirewallRule -DisplayName {quoted} -Direction Inbound -Action Allow "
        "-Protocol TCP -LocalPort 7887 -Profile Any"
    ) in script
    assert ps.parse_firewall_rule("enabled\r\n") == "enabled"
    assert ps.parse_firewall_rule("created") == "created"


@pytest.mark.parametrize("name", ["", "  ", "two\nlines"])
def test_firewall_rule_names_are_one_line(name):
    with pytest.raises(UsageError, match="one non-empty line"):
        ps.FirewallRule(name, 80)


def test_playwright_task():
    assert ps.start_playwright_task_script() == (
        "Start-ScheduledTask -TaskName 'WinAutomation-Playwright'"
    )
