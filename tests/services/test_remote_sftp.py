"""The ``remote`` repository over sftp on the loopback sshd: init, back up, damage, restore.

restic reaches the repository through the ``sftp.command`` the repository's ``options`` give
(the loopback sshd's own key and known_hosts), as a user would give theirs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from homeops.services import restic as r
from tests.fixtures.sshd import SshdHandle
from tests.services.test_settings import run_svc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed"),
]


@pytest.fixture
def sftp_dir() -> Iterator[Path]:
    """A directory the sshd login user can create the repository in."""
    path = Path(tempfile.mkdtemp(prefix="homeops-svc-sftp-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_back_up_damage_and_restore_over_sftp(
    capsys: pytest.CaptureFixture[str],
    sshd: SshdHandle,
    sftp_dir: Path,
    tmp_path: Path,
    state_dir: Path,
) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n")
    (data / "sub" / "b.bin").write_bytes(bytes(range(256)) * 64)
    original = digest(data)
    password = tmp_path / "pw"
    password.write_text("remote secret phrase\n")
    ssh = [*sshd.ssh_argv(), "-s", "sftp"]
    config = tmp_path / "services.json"
    config.write_text(
        json.dumps(
            {
                "systemd": "never",
                "repositories": {
                    "remote": {
                        "repository": f"sftp:{sshd.user}@{sshd.host}:{sftp_dir / 'repo'}",
                        "password_file": str(password),
                        "options": [r.sftp_command_option(ssh)],
                    }
                },
                "restore": {
                    "staging_dir": str(tmp_path / "staging"),
                    "aside_dir": str(tmp_path / "aside"),
                },
                # Data only (no compose project): nothing to stop around the restore.
                "services": {
                    "web": {
                        "compose": {"enable": False},
                        "backup": {"enable": True, "paths": [str(data)]},
                    }
                },
            }
        )
    )
    base = ("--config", str(config))
    code, out, err = run_svc(capsys, *base, "init", "remote")
    assert (code, out) == (0, "repo=remote state=created\n"), err
    assert (sftp_dir / "repo" / "config").is_file()
    code, out, err = run_svc(capsys, *base, "backup", "remote", "web", "--json")
    assert code == 0, err
    code, out, err = run_svc(capsys, *base, "list-backups", "remote", "web", "--json")
    assert code == 0, err
    [snapshot] = json.loads(out)
    assert snapshot["tags"][0] == "web"

    # Damage the live data: change one file, delete one, add one.
    (data / "a.txt").write_text("ALPHA damaged\n")
    (data / "sub" / "b.bin").unlink()
    (data / "stray.txt").write_text("not in the backup\n")
    code, out, err = run_svc(
        capsys, *base, "restore", "remote", "web", "latest", "--in-place", "--yes"
    )
    assert code == 0, err
    assert digest(data) == original
    # The damaged data was kept aside, not deleted.
    kept = list((tmp_path / "aside").rglob("stray.txt"))
    assert len(kept) == 1 and kept[0].read_text() == "not in the backup\n"
    # The password never reached the output or the logs.
    assert "remote secret phrase" not in out + err
