"""Test-wide fixtures live in tests/fixtures/; this file only registers them."""

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.sshd",
    "tests.fixtures.playwright_server",
    "tests.fixtures.aloha",
    "tests.fixtures.winvm",
    "tests.fixtures.dockerd",
]
