"""The recording FakeRunner (tests/fakes/runner.py) keeps the Runner contract it imitates."""

from __future__ import annotations

import contextlib

import pytest

from homeops.core.errors import HomeopsTimeout
from homeops.core.runner import CommandFailed, RawRunner
from tests.fakes.runner import Call, FakeRunner, UnexpectedCall


def _as_runner(fake: FakeRunner) -> RawRunner:
    return fake


async def test_exact_match_answers_and_records() -> None:
    fake = FakeRunner(host="root@h:22")
    fake.expect(["nix", "build", ".#x"], stdout="out\n", stderr=b"warn", exit_status=0)
    result = await _as_runner(fake).run(["nix", "build", ".#x"], timeout=5, stdin="in")
    assert (result.argv, result.stdout, result.stderr, result.exit_status, result.host) == (
        ("nix", "build", ".#x"),
        b"out\n",
        b"warn",
        0,
        "root@h:22",
    )
    assert fake.calls == [Call(("nix", "build", ".#x"), 5, b"in", False)]
    assert fake.argvs == [["nix", "build", ".#x"]]
    fake.assert_done()


async def test_prefix_match_and_repeat() -> None:
    fake = FakeRunner()
    fake.expect(["systemctl", "is-active"], prefix=True, stdout="active\n", times=None)
    for unit in ("a", "b", "c"):
        assert (await fake.run(["systemctl", "is-active", unit], timeout=1)).lines() == ["active"]
    # A prefix never matches a shorter argv.
    with pytest.raises(UnexpectedCall):
        await fake.run(["systemctl"], timeout=1)


async def test_scripts_answer_in_order_and_run_out() -> None:
    fake = FakeRunner()
    fake.expect(["probe"], exit_status=1)
    fake.expect(["probe"], exit_status=0)
    assert [(await fake.run(["probe"], timeout=1)).exit_status for _ in range(2)] == [1, 0]
    with pytest.raises(UnexpectedCall, match=r"unexpected run call: \['probe'\]"):
        await fake.run(["probe"], timeout=1)


async def test_unexpected_call_fails_loudly_even_if_swallowed() -> None:
    fake = FakeRunner()
    fake.expect(["a"])
    with contextlib.suppress(Exception):
        await fake.run(["b"], timeout=1)
    await fake.run(["a"], timeout=1)
    with pytest.raises(UnexpectedCall, match=r"\['b'\]"):
        fake.assert_done()


async def test_unused_script_fails_assert_done() -> None:
    fake = FakeRunner()
    fake.expect(["never"])
    with pytest.raises(AssertionError, match="never run"):
        fake.assert_done()


async def test_check_raises_like_the_real_runners() -> None:
    fake = FakeRunner(host="u@h:22")
    fake.expect(["false"], exit_status=3, stderr="bad\n")
    with pytest.raises(CommandFailed) as info:
        await fake.run(["false"], timeout=1, check=True)
    assert (info.value.exit_status, info.value.tail, info.value.host) == (3, "bad", "u@h:22")
    assert str(info.value) == "ssh u@h:22: false: exit 3: bad"


async def test_scripted_exception_is_raised() -> None:
    fake = FakeRunner()
    fake.expect(["slow"], raises=HomeopsTimeout("slow: timed out after 1s"))
    with pytest.raises(HomeopsTimeout):
        await fake.run(["slow"], timeout=1)
    assert fake.argvs == [["slow"]]


async def test_run_raw_is_scripted_separately() -> None:
    fake = FakeRunner()
    fake.expect_raw("dir C:\\ & echo x", stdout="x\r\n")
    with pytest.raises(UnexpectedCall):
        await fake.run(["dir C:\\ & echo x"], timeout=1)  # an argv is not a raw line
    result = await fake.run_raw("dir C:\\ & echo x", timeout=1)
    assert result.lines() == ["x"]
    assert fake.calls[-1].raw


async def test_argv_shape_is_checked_as_the_real_runners_do() -> None:
    fake = FakeRunner()
    with pytest.raises(TypeError):
        await fake.run("echo hi", timeout=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        await fake.run([], timeout=1)
    with pytest.raises(ValueError, match="empty"):
        await fake.run_raw(" ", timeout=1)
    with pytest.raises(TypeError):
        fake.expect("echo hi")
