import io
import json
import logging
import re
from pathlib import Path

import pytest

from homeops.core import logging as hlog

CASES = json.loads((Path(__file__).parent / "cases" / "logfmt.json").read_text(encoding="utf-8"))
LINE = re.compile(
    r"^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=(debug|info|warn|error) "
    r"component=\S+ op=\S+ msg="
)


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in CASES])
def test_encode_value(case):
    assert hlog.encode_value(case["value"]) == case["want"]


def test_encoded_values_are_ascii_and_single_line():
    for case in CASES:
        out = hlog.encode_value(case["value"])
        assert out.isascii()
        assert "\n" not in out


@pytest.mark.parametrize(
    ("value", "want"),
    [
        pytest.param(True, "true", id="bool"),
        pytest.param(None, '""', id="none"),
        pytest.param(12, "12", id="int"),
        pytest.param(1.5, "1.5", id="float"),
    ],
)
def test_encode_scalar(value, want):
    assert hlog.encode_value(value) == want


def test_line_order_and_context(log_stream):
    log = hlog.get_logger("core.test", ssh_host="localhost")
    log.info("connect", "connected to host", err="x y", duration_ms=12.34, task_id="t1")
    line = log_stream.getvalue().strip()
    assert LINE.match(line), line
    tail = 'op=connect msg="connected to host" err="x y" duration_ms=12.3'
    assert line.endswith(f"{tail} ssh_host=localhost task_id=t1")


def test_debug_hidden_unless_enabled():
    buf = io.StringIO()
    hlog.configure(stream=buf)
    log = hlog.get_logger("core.test")
    log.debug("op", "hidden")
    log.info("op", "shown")
    hlog.configure(debug=True, stream=buf)
    log.debug("op", "now shown")
    lines = buf.getvalue().splitlines()
    assert [line.split("msg=")[1] for line in lines] == ["shown", '"now shown"']
    hlog.configure(stream=io.StringIO())


def test_secrets_masked_everywhere(log_stream):
    hlog.register_secret("hunter22-secret")
    log = hlog.get_logger("core.test")
    log.info("op", "token is hunter22-secret", err="auth hunter22-secret", arg="x=hunter22-secret")
    logging.getLogger("asyncssh").warning("foreign line with hunter22-secret")
    out = log_stream.getvalue()
    assert "hunter22" not in out
    assert out.count("***") == 4


def test_short_secrets_not_registered(log_stream):
    hlog.register_secret("on")
    hlog.get_logger("core.test").info("op", "turned on")
    assert "turned on" in log_stream.getvalue()


def test_foreign_records_use_logfmt(log_stream):
    logging.getLogger("asyncssh").warning("channel %s closed", 3)
    line = log_stream.getvalue().strip()
    assert LINE.match(line), line
    assert "component=asyncssh" in line
    assert 'msg="channel 3 closed"' in line


def test_keys_sanitised(log_stream):
    hlog.get_logger("core.test").info("op", "m", **{"bad key=": 1})
    assert "bad_key_=1" in log_stream.getvalue()


def test_none_context_values_are_omitted(log_stream):
    hlog.get_logger("core.test").info("op", "m", present=1, absent=None)
    line = log_stream.getvalue().strip()
    assert line.endswith("msg=m present=1")


def test_longer_secret_masked_whole_when_a_prefix_is_also_secret(log_stream):
    hlog.register_secret("abcd1234")
    hlog.register_secret("abcd1234-tail")
    hlog.get_logger("core.test").info("op", "abcd1234-tail")
    assert log_stream.getvalue().strip().endswith("msg=***")


def test_four_character_secret_is_masked(log_stream):
    hlog.register_secret("k3y!")
    hlog.get_logger("core.test").info("op", "key k3y!")
    assert "k3y!" not in log_stream.getvalue()


def test_asyncssh_info_hidden_unless_debug():
    buf = io.StringIO()
    hlog.configure(stream=buf)
    logging.getLogger("asyncssh").info("channel opened")
    assert buf.getvalue() == ""
    hlog.configure(debug=True, stream=buf)
    logging.getLogger("asyncssh").info("channel opened")
    assert "channel opened" in buf.getvalue()
    hlog.configure(stream=io.StringIO())


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param('pa"ss-word', id="quote"),
        pytest.param("pa\\ss-word", id="backslash"),
        pytest.param("pa ss\tword", id="space-and-tab"),
        pytest.param("pässwörd", id="non-ascii"),
    ],
)
def test_secret_masked_before_escaping(log_stream, secret):
    # Escaping rewrites the secret (" becomes \", ö becomes \u00f6): a mask applied to the
    # escaped text no longer finds it, and the secret is printed in its escaped spelling.
    escaped = hlog.encode_value(secret).strip('"')  # before it is registered as a secret
    assert escaped != secret
    hlog.register_secret(secret)
    hlog.get_logger("core.test").info("op", f"token={secret}", err=secret, arg=f"[{secret}]")
    out = log_stream.getvalue()
    assert secret not in out
    assert escaped not in out
    assert out.count("***") == 3
