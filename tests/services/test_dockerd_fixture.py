"""The test Docker engine (tests/fixtures/dockerd.py): Debian's dockerd started by hand, a busybox
image imported, containers without network, real volumes, and Debian's docker-compose 1.29
running projects on it (CONTRACTS.md §7)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.dockerd import (
    STORAGE_DRIVER_ENV,
    DockerdHandle,
    DockerdUnavailable,
    _pids_using,
    missing_requirements,
    start_dockerd,
)

pytestmark = pytest.mark.integration


def test_engine_answers_both_docker_clients(dockerd: DockerdHandle):
    assert dockerd.host == f"unix://{dockerd.socket}"
    assert dockerd.socket.is_socket()
    debian = dockerd.docker("version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}")
    server, api = debian.stdout.split()
    assert server.startswith("20.10.")
    assert api == "1.41"
    # The docker first on PATH (28.x here) negotiates down to the daemon's API by itself.
    on_path = shutil.which("docker")
    assert on_path is not None
    done = subprocess.run(
        [on_path, "version", "--format", "{{.Client.APIVersion}} {{.Server.Version}}"],
        env=dockerd.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.split() == ["1.41", server]
    # The engine keeps its key and config to itself: nothing under /etc/docker or ~/.docker.
    assert (dockerd.root / "key.json").is_file()
    assert dockerd.env()["DOCKER_CONFIG"] == str(dockerd.client_config)


def test_env_points_the_clients_only_at_this_engine(dockerd: DockerdHandle):
    env = dockerd.env({"PATH": "/usr/bin", "DOCKER_CONTEXT": "prod", "COMPOSE_FILE": "x.yml"})
    assert env == {
        "PATH": "/usr/bin",
        "DOCKER_HOST": dockerd.host,
        "DOCKER_CONFIG": str(dockerd.client_config),
    }


def test_imported_image_runs_a_container_without_network(dockerd: DockerdHandle):
    done = dockerd.docker(
        "run",
        "--rm",
        "--network",
        "none",
        dockerd.image,
        "sh",
        "-c",
        "echo hello; sleep 0.1; cat /proc/net/dev",
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "hello"
    interfaces = sorted(line.split(":")[0].strip() for line in lines if ":" in line)
    assert interfaces == ["lo"]
    # Nothing can be pulled: an image that was not imported is an error, not a download.
    missing = dockerd.docker("image", "inspect", "busybox:latest", check=False)
    assert missing.returncode != 0


def test_volume_mountpoint_holds_what_a_container_wrote(dockerd: DockerdHandle):
    name = f"v{secrets.token_hex(5)}"
    token = secrets.token_hex(8)
    mountpoint = dockerd.volume_create(name)
    try:
        assert mountpoint.is_relative_to(dockerd.root / "data" / "volumes")
        dockerd.docker(
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            f"{name}:/data",
            dockerd.image,
            "sh",
            "-c",
            f"echo {token} > /data/from-container",
        )
        assert (mountpoint / "from-container").read_text() == f"{token}\n"
        (mountpoint / "from-host").write_text("host side\n")
        done = dockerd.docker(
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            f"{name}:/data",
            dockerd.image,
            "cat",
            "/data/from-host",
        )
        assert done.stdout == "host side\n"
    finally:
        dockerd.docker("volume", "rm", "--force", name, check=False)


def test_compose_up_ps_stop_start_down(dockerd: DockerdHandle, compose_project):
    project = compose_project
    project.compose("up", "-d")
    rows = project.containers()
    assert [r["State"] for r in rows] == ["running"]
    assert rows[0]["Networks"] == "none"
    assert "Up" in project.compose("ps").stdout
    volume = project.volume("data")
    mountpoint = dockerd.volume_mountpoint(volume)
    name = rows[0]["Names"]
    dockerd.docker("exec", name, "sh", "-c", "echo kept > /data/file")

    begun = time.monotonic()
    project.compose("stop")
    stop_seconds = time.monotonic() - begun
    assert project.states() == ["exited"]
    # The loop command traps SIGTERM: compose's 10 s grace period is not used.
    assert stop_seconds < 5
    assert dockerd.inspect(name)["State"]["ExitCode"] == 0

    project.compose("start")
    assert project.states() == ["running"]
    assert dockerd.docker("exec", name, "cat", "/data/file").stdout == "kept\n"

    project.compose("down")
    assert project.containers() == []
    # down keeps named volumes (down -v removes them): the data is still there.
    assert (mountpoint / "file").read_text() == "kept\n"


def test_compose_logs_show_the_container_output(compose_project):
    compose_project.compose("up", "-d")
    deadline = time.monotonic() + 10
    while "started" not in (out := compose_project.compose("logs", "--no-color").stdout):
        assert time.monotonic() < deadline, out
        time.sleep(0.1)
    assert "app_1  | started" in out


def test_a_second_engine_starts_beside_the_session_one_and_leaves_nothing(
    dockerd: DockerdHandle,
):
    with start_dockerd() as other:
        assert other.root != dockerd.root
        other.docker("run", "--rm", "--network", "none", other.image, "true")
        other.volume_create("left-behind")
        other.docker(
            "run",
            "-d",
            "--network",
            "none",
            "-v",
            "left-behind:/data",
            other.image,
            "sleep",
            "600",
        )
        root, pid = other.root, other.pid
        assert os.path.exists(f"/proc/{pid}")
    assert not root.exists()
    assert not Path(f"/proc/{pid}").exists()
    with open("/proc/self/mountinfo") as mounts:
        assert str(root) not in mounts.read()
    assert _pids_using(root) == []  # containerd and the shims are gone too
    # The session's engine is untouched.
    assert dockerd.docker("info", "--format", "{{.ServerVersion}}").stdout.startswith("20.10.")


def test_a_dockerd_that_cannot_start_says_why_with_its_log(monkeypatch: pytest.MonkeyPatch):
    if missing_requirements():
        pytest.skip(f"no test dockerd: {missing_requirements()}")
    monkeypatch.setenv(STORAGE_DRIVER_ENV, "no-such-driver")
    with pytest.raises(DockerdUnavailable) as caught, start_dockerd():
        pytest.fail("dockerd started with a storage driver that does not exist")
    message = str(caught.value)
    assert message.startswith("dockerd exited with ")
    assert "no-such-driver" in message  # from the log's last lines


def test_not_root_is_a_skip_reason(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = missing_requirements()
    assert reason is not None
    assert "root" in reason
