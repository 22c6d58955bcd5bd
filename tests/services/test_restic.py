"""restic (CONTRACTS.md §5): the pure builders and parsers against recorded output
(tests/services/cases/restic_*.json: real runs of Debian's restic 0.14 on this machine, plus
0.17/0.18 cases taken from restic's own sources and docs), and integration tests that run the
real /usr/bin/restic through the process seam and feed its output to the same parsers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

import pytest

from homeops.core import process
from homeops.core.errors import DependencyUnavailable, OperationalError, UsageError
from homeops.services import restic as r

CASES = Path(__file__).parent / "cases"
RESTIC = shutil.which("restic")
needs_restic = pytest.mark.skipif(
    RESTIC is None, reason="restic is not installed (apt-get install -y restic)"
)
V14 = r.ResticVersion(0, 14, 0)
V17 = r.ResticVersion(0, 17, 3)


def _cases(name):
    return [pytest.param(c, id=c["id"]) for c in json.loads((CASES / name).read_text())]


def _version(text):
    return None if text is None else r.ResticVersion(*map(int, text.split(".")))


# -- version --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("restic_version.json"))
def test_parse_version(case):
    if case["version"] is None:
        with pytest.raises(OperationalError, match="restic version: unexpected output"):
            r.parse_version(case["output"])
        return
    version = r.parse_version(case["output"])
    assert version == tuple(case["version"])
    assert str(version) == ".".join(map(str, case["version"]))


def test_versions_compare_as_tuples():
    assert r.ResticVersion(0, 14, 0) < r.V0_16 < r.V0_17 < r.V0_17_1 < r.ResticVersion(0, 18, 0)
    assert r.ResticVersion(1, 0, 0) > r.ResticVersion(0, 99, 99)


# -- argv -----------------------------------------------------------------------------------


def test_backup_argv_tags_excludes_host_and_paths_after_the_separator():
    argv = r.backup_argv(
        r.Restic(),
        ["/srv/app", Path("/var/lib/docker/volumes/app_data/_data"), "/srv/app"],
        service="app",
        tags=["media", "app", "nightly"],
        excludes=["*.log", "/srv/app/cache"],
        host="homeserver",
    )
    assert argv == [
        "restic",
        "backup",
        "--json",
        "--tag=app",
        "--tag=media",
        "--tag=nightly",
        "--exclude=*.log",
        "--exclude=/srv/app/cache",
        "--host=homeserver",
        "--",
        "/srv/app",
        "/var/lib/docker/volumes/app_data/_data",
    ]


def test_backup_argv_time_and_dry_run():
    argv = r.backup_argv(
        r.Restic(program="/nix/store/x-restic/bin/restic"),
        ["/srv"],
        service="app",
        time="2024-01-02 03:04:05",
        dry_run=True,
    )
    assert argv == [
        "/nix/store/x-restic/bin/restic",
        "backup",
        "--json",
        "--tag=app",
        "--time=2024-01-02 03:04:05",
        "--dry-run",
        "--",
        "/srv",
    ]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"paths": []}, "app: nothing to back up", id="no-paths"),
        pytest.param({"paths": ["srv/app"]}, "must be an absolute path", id="relative-path"),
        pytest.param({"service": "my app"}, "without commas or spaces", id="space-in-service"),
        pytest.param({"service": ""}, "service name", id="empty-service"),
        pytest.param({"tags": ["a,b"]}, "app: backup.tags", id="comma-tag"),
        pytest.param({"excludes": [" "]}, "empty pattern", id="blank-exclude"),
        pytest.param({"host": "-rf"}, "not a host name", id="flag-like-host"),
        pytest.param({"time": "yesterday"}, "YYYY-MM-DD HH:MM:SS", id="bad-time"),
    ],
)
def test_backup_argv_refuses(kwargs, error):
    args = {"paths": ["/srv/app"], "service": "app", **kwargs}
    paths = args.pop("paths")
    with pytest.raises(UsageError, match=error):
        r.backup_argv(r.Restic(), paths, **args)


def test_read_only_commands():
    restic = r.Restic()
    assert r.version_argv(restic) == ["restic", "version"]
    assert r.init_argv(restic) == ["restic", "init"]
    assert r.cat_config_argv(restic) == ["restic", "cat", "config"]
    assert r.snapshots_argv(restic) == ["restic", "snapshots", "--json"]
    assert r.snapshots_argv(restic, tag="app", host="homeserver", latest=3) == [
        "restic",
        "snapshots",
        "--json",
        "--tag=app",
        "--host=homeserver",
        "--latest=3",
    ]
    assert r.ls_argv(restic, "latest", tag="app") == [
        "restic",
        "ls",
        "--json",
        "--tag=app",
        "latest",
    ]
    assert r.unlock_argv(restic) == ["restic", "unlock"]
    assert r.unlock_argv(restic, remove_all=True) == ["restic", "unlock", "--remove-all"]


def test_forget_argv_groups_by_tags_and_skips_unused_rules():
    argv = r.forget_argv(r.Restic(), tag="app", policy=r.KeepPolicy(daily=10, monthly=4))
    assert argv == [
        "restic",
        "forget",
        "--json",
        "--prune",
        "--tag=app",
        "--group-by=tags",
        "--keep-daily=10",
        "--keep-monthly=4",
    ]
    no_prune = r.forget_argv(
        r.Restic(), tag="app", policy=r.KeepPolicy(1, 2, 3), prune=False, dry_run=True
    )
    assert "--prune" not in no_prune
    assert no_prune[-4:] == ["--keep-daily=1", "--keep-weekly=2", "--keep-monthly=3", "--dry-run"]


def test_forget_refuses_an_empty_policy():
    assert r.KeepPolicy().empty
    with pytest.raises(UsageError, match="app: the retention policy keeps nothing"):
        r.forget_argv(r.Restic(), tag="app", policy=r.KeepPolicy())


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"daily": -1}, id="negative"),
        pytest.param({"weekly": True}, id="bool"),
        pytest.param({"monthly": 1.5}, id="float"),
    ],
)
def test_keep_policy_refuses(kwargs):
    with pytest.raises(UsageError, match="policy\\."):
        r.KeepPolicy(**kwargs)


@pytest.mark.parametrize(
    ("subset", "expected"),
    [
        pytest.param(None, ["restic", "check"], id="plain"),
        pytest.param("10%", ["restic", "check", "--read-data-subset=10%"], id="percent"),
        pytest.param("2.5%", ["restic", "check", "--read-data-subset=2.5%"], id="fraction"),
        pytest.param("1/5", ["restic", "check", "--read-data-subset=1/5"], id="n-of-t"),
        pytest.param("500M", ["restic", "check", "--read-data-subset=500M"], id="size"),
        pytest.param("5/5", ["restic", "check", "--read-data-subset=5/5"], id="n-equals-t"),
        pytest.param("1/256", ["restic", "check", "--read-data-subset=1/256"], id="t-max"),
        pytest.param("1t", ["restic", "check", "--read-data-subset=1t"], id="size-lower"),
    ],
)
def test_check_argv(subset, expected):
    assert r.check_argv(r.Restic(), read_data_subset=subset) == expected


@pytest.mark.parametrize(
    "subset",
    [
        "0%", "101%", "ten%", "--read-data", "",
        # restic refuses these itself, but only after opening the repository (exit 1):
        "1/0", "0/5", "6/5", "2/1", "1/257", "0", "5", "0M", "99999999999999999999G",
    ],
)  # fmt: skip
def test_check_argv_refuses_bad_subsets(subset):
    with pytest.raises(UsageError, match="--read-data-subset"):
        r.check_argv(r.Restic(), read_data_subset=subset)


def test_restore_argv():
    argv = r.restore_argv(
        r.Restic(),
        "latest",
        Path("/var/tmp/svc-restore"),
        tag="app",
        includes=["/srv/app/db"],
        verify=True,
    )
    assert argv == [
        "restic",
        "restore",
        "latest",
        "--target=/var/tmp/svc-restore",
        "--tag=app",
        "--include=/srv/app/db",
        "--verify",
    ]
    assert r.restore_argv(r.Restic(), "4b6cf4f7", "/t") == [
        "restic",
        "restore",
        "4b6cf4f7",
        "--target=/t",
    ]


@pytest.mark.parametrize(
    ("snapshot", "target", "error"),
    [
        pytest.param("--delete", "/t", "expected 'latest' or a hex snapshot id", id="flag"),
        pytest.param("LATEST", "/t", "hex snapshot id", id="upper"),
        pytest.param("abc", "/t", "hex snapshot id", id="too-short"),
        pytest.param("latest", "relative/dir", "restore target must be an absolute path", id="rel"),
    ],
)
def test_restore_argv_refuses(snapshot, target, error):
    with pytest.raises(UsageError, match=error):
        r.restore_argv(r.Restic(), snapshot, target)


def test_retry_lock_only_for_restic_that_has_it():
    old = r.Restic(version=V14, retry_lock_s=300)
    new = r.Restic(version=r.ResticVersion(0, 16, 0), retry_lock_s=300)
    unknown = r.Restic(retry_lock_s=300)
    assert not old.native_retry_lock
    assert not unknown.native_retry_lock  # 0.14 would fail on the unknown flag
    assert new.native_retry_lock
    assert r.snapshots_argv(old) == ["restic", "snapshots", "--json"]
    assert r.snapshots_argv(new) == ["restic", "--retry-lock=300s", "snapshots", "--json"]
    with pytest.raises(UsageError, match="--retry-lock"):
        r.Restic(retry_lock_s=0)


def test_extended_options_come_first():
    restic = r.Restic(options=("sftp.command=ssh -p 2222 u@h -s sftp", "sftp.connections=2"))
    assert r.init_argv(restic) == [
        "restic",
        "-o",
        "sftp.command=ssh -p 2222 u@h -s sftp",
        "-o",
        "sftp.connections=2",
        "init",
    ]
    with pytest.raises(UsageError, match="key=value"):
        r.Restic(options=("-rf",))


def _restic_split(data: str) -> list[str]:
    """restic's internal/backend/shell_split.go (v0.14.0), line for line, to check quoting."""
    out, quote, last, start = [], "", "", -1
    for i, ch in enumerate(data):
        split = False
        if last != "\\" and quote and ch == quote:
            quote, split = "", True
        elif last != "\\" and not quote and ch in "\"'":
            quote, split = ch, True
        else:
            last = ch
            split = not quote and (ch == "\\" or ch.isspace())
        if split:
            if start >= 0:
                out.append(data[start:i])
                start = -1
        elif start == -1:
            start = i
    if start >= 0:
        out.append(data[start:])
    return out


def test_sftp_command_survives_restics_splitter():
    ssh = ["ssh", "-F", "/dev/null", "-o", "UserKnownHostsFile=/var/lib/my dir/kh", "-s", "sftp"]
    option = r.sftp_command_option([*ssh[:-2], "backup@nas", "-s", "sftp"])
    assert option.startswith("sftp.command=")
    assert _restic_split(option.removeprefix("sftp.command=")) == [
        *ssh[:-2],
        "backup@nas",
        "-s",
        "sftp",
    ]
    for bad in ('a"b', "it's", "back\\slash", ""):
        with pytest.raises(UsageError, match=r"sftp\.command"):
            r.sftp_command_option(["ssh", bad])


def test_env_carries_repository_and_password_file_and_drops_inherited_credentials():
    base = {
        "PATH": "/usr/bin",
        "RESTIC_PASSWORD": "leaked",
        "RESTIC_PASSWORD_COMMAND": "pass show x",
        "RESTIC_REPOSITORY_FILE": "/other",
    }
    env = r.restic_env(
        base, password_file=Path("/run/creds/pw"), repository="/mnt/backup", cache_dir="/c"
    )
    assert env == {
        "PATH": "/usr/bin",
        "RESTIC_REPOSITORY": "/mnt/backup",
        "RESTIC_PASSWORD_FILE": "/run/creds/pw",
        "RESTIC_CACHE_DIR": "/c",
    }
    assert base["RESTIC_PASSWORD"] == "leaked"  # the caller's mapping is not touched
    by_file = r.restic_env({}, password_file="/pw", repository_file="/etc/svc/repo")
    assert by_file == {"RESTIC_REPOSITORY_FILE": "/etc/svc/repo", "RESTIC_PASSWORD_FILE": "/pw"}
    with pytest.raises(UsageError, match="exactly one"):
        r.restic_env({}, password_file="/pw")
    with pytest.raises(UsageError, match="exactly one"):
        r.restic_env({}, password_file="/pw", repository="/r", repository_file="/f")
    with pytest.raises(UsageError, match="password file path is empty"):
        r.restic_env({}, password_file="", repository="/r")


def test_no_builder_puts_a_password_on_argv():
    restic = r.Restic()
    everything = [
        *r.backup_argv(restic, ["/srv"], service="app"),
        *r.forget_argv(restic, tag="app", policy=r.KeepPolicy(daily=1)),
        *r.restore_argv(restic, "latest", "/t"),
        *r.init_argv(restic),
        *r.check_argv(restic),
    ]
    assert not [a for a in everything if "password" in a or a in ("-p", "-r", "--repo")]


# -- backup --json --------------------------------------------------------------------------

_KINDS = {
    "status": r.BackupStatus,
    "summary": r.BackupSummary,
    "error": r.BackupError,
    "verbose_status": r.VerboseStatus,
    "exit_error": r.ExitError,
    "text": r.TextLine,
}


def _plain(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value


@pytest.mark.parametrize("case", _cases("restic_backup_lines.json"))
def test_parse_backup_line(case):
    event = r.parse_backup_line(case["line"])
    if case["kind"] is None:
        assert event is None
        return
    assert type(event) is _KINDS[case["kind"]]
    for name, expected in case.get("fields", {}).items():
        assert _plain(getattr(event, name)) == expected, name


@pytest.mark.parametrize("case", _cases("restic_runs.json"))
def test_classify_run(case):
    verdict = r.classify_run(
        case["exit_code"],
        case["stderr"],
        version=_version(case["version"]),
        repo="local",
        location=case.get("repository"),
        named=case.get("named"),
    )
    expect = case["expect"]
    for absent in expect.get("absent", []):
        assert absent not in f"{verdict.message} ({verdict.fix})", absent
    assert verdict.outcome == r.ResticOutcome(expect["outcome"])
    assert verdict.exit_code == case["exit_code"]
    assert "\n" not in verdict.message
    assert list(verdict.unreadable) == expect.get("unreadable", [])
    assert list(verdict.missing_sources) == expect.get("missing_sources", [])
    for key in ("message", "fix"):
        if key in expect:
            assert expect[key] in (getattr(verdict, key) or ""), key
    for key in ("location", "lock_holder", "detail"):
        if key in expect:
            assert getattr(verdict, key) == expect[key], key
    if verdict.outcome not in (r.ResticOutcome.OK, r.ResticOutcome.PARTIAL):
        # Anything else needs telling the user what to do, unless nobody knows.
        assert verdict.fix or verdict.outcome is r.ResticOutcome.FAILED


@pytest.mark.parametrize(
    "case",
    [c for c in _cases("restic_runs.json") if "stdout" in c.values[0]],
)
def test_backup_report_of_recorded_runs(case):
    report = r.parse_backup_output(case["stdout"], case["stderr"])
    expect = case["expect"]
    if expect["snapshot_id"] is None:  # text mode (no --json): no summary to read
        assert report.summary is None
    else:
        assert report.summary is not None
        assert report.summary.snapshot_id == expect["snapshot_id"]
    for key in ("files_new", "total_bytes_processed"):
        if key in expect:
            assert getattr(report.summary, key) == expect[key]
    assert list(report.unreadable) == expect.get("unreadable", [])
    assert list(report.missing_sources) == expect.get("missing_sources", [])
    if "error_message" in expect:
        assert report.errors[0].message == expect["error_message"]
    # The summary line of restic's last words is "Warning: ..."; it is not repeated as a warning.
    assert "Warning: at least one source file could not be read" not in report.warnings


def test_classify_reads_0_17_error_messages_too():
    case = next(
        c
        for c in json.loads((CASES / "restic_runs.json").read_text())
        if c["id"] == "0.17-exit-3-error-message-object"
    )
    report = r.parse_backup_output("", case["stderr"])
    assert report.errors == (
        r.BackupError(
            "/srv/app/secret.db", "archival", "open /srv/app/secret.db: permission denied"
        ),
    )


def test_backup_events_fold_as_they_stream():
    lines = [
        '{"message_type":"status","percent_done":0.5,"total_files":2,"files_done":1}',
        "/srv/gone does not exist, skipping",
        '{"message_type":"error","error":{"message":"x"},"during":"archival","item":"/srv/a"}',
        '{"message_type":"error","error":{},"during":"scan","item":"/srv/a"}',
        '{"message_type":"status","percent_done":1,"total_files":2,"files_done":2}',
        '{"message_type":"summary","snapshot_id":"abcd1234","files_new":2}',
    ]
    report = r.parse_backup_events(r.parse_backup_line(line) for line in lines)
    assert report.last_status == r.BackupStatus(percent_done=1.0, total_files=2, files_done=2)
    assert report.summary == r.BackupSummary(files_new=2, snapshot_id="abcd1234")
    assert report.unreadable == ("/srv/a",)  # two errors, one path
    assert len(report.errors) == 2
    assert report.missing_sources == ("/srv/gone",)
    assert report.warnings == ("/srv/gone does not exist, skipping",)


def test_partial_lists_at_most_three_paths_then_a_count():
    stderr = "".join(
        json.dumps({"message_type": "error", "error": {}, "during": "archival", "item": f"/f{i}"})
        + "\n"
        for i in range(5)
    )
    verdict = r.classify_run(3, stderr, version=V14)
    assert verdict.message == (
        "snapshot saved, but 5 source path(s) could not be read: /f0, /f1, /f2 and 2 more"
    )
    assert verdict.unreadable == ("/f0", "/f1", "/f2", "/f3", "/f4")
    assert verdict.succeeded


def test_verdict_errors_map_to_exit_classes():
    assert r.classify_run(0, "").error() is None
    assert r.classify_run(3, "").error() is None
    unreachable = r.classify_run(
        1, "Fatal: unable to open repository at sftp:u@h:/r: unable to start the sftp session\n"
    ).error()
    assert isinstance(unreachable, DependencyUnavailable)
    missing = r.classify_run(10, "", version=V17, repo="remote").error()
    assert type(missing) is OperationalError
    assert "svc init remote" in str(missing)
    assert "svc init <local|remote>" in (r.classify_run(10, "").fix or "")


# -- snapshots, forget, ls, init, restore ---------------------------------------------------


@pytest.mark.parametrize("case", _cases("restic_snapshots.json"))
def test_parse_snapshots(case):
    expect = case["expect"]
    if "error" in expect:
        with pytest.raises(OperationalError, match=expect["error"]):
            r.parse_snapshots(case["stdout"])
        return
    snapshots = r.parse_snapshots(case["stdout"])
    assert [s.short_id for s in snapshots] == expect["short_ids"]
    if "times" in expect:
        assert [s.time.isoformat() for s in snapshots] == expect["times"]
        assert all(s.time.tzinfo is not None for s in snapshots)
        assert snapshots[0].tags == tuple(expect["tags"])
        assert {s.hostname for s in snapshots} == {expect["hostname"]}
        assert snapshots[0].paths == tuple(expect["paths"])
        assert snapshots[0].id == expect["first_id"]
        assert snapshots[0].parent is None
        assert snapshots[1].parent == expect["second_parent"]
    if "summary_files" in expect:
        assert [s.program_version for s in snapshots] == expect["program_version"]
        files = [s.summary.total_files_processed if s.summary else None for s in snapshots]
        size = [s.summary.total_bytes_processed if s.summary else None for s in snapshots]
        packed = [s.summary.data_added_packed if s.summary else None for s in snapshots]
        assert files == expect["summary_files"]
        assert size == expect["summary_bytes"]
        assert packed == expect["packed"]


@pytest.mark.parametrize("case", _cases("restic_forget.json"))
def test_parse_forget(case):
    expect = case["expect"]
    if "error" in expect:
        with pytest.raises(OperationalError, match=expect["error"]):
            r.parse_forget(case["stdout"])
        return
    result = r.parse_forget(case["stdout"])
    assert len(result.groups) == expect["groups"]
    assert [s.short_id for s in result.kept] == expect["keep"]
    assert [s.short_id for s in result.removed] == expect["remove"]
    if result.groups:
        assert list(result.groups[0].tags) == expect["tags"]
        assert [list(x.matches) for x in result.groups[0].reasons] == expect["reasons"]
    if "reason_ids" in expect:
        assert [x.snapshot_id for x in result.groups[0].reasons] == expect["reason_ids"]
    assert expect["prune_output"] in result.prune_output
    if not expect["prune_output"]:
        assert result.prune_output == ""


@pytest.mark.parametrize("case", _cases("restic_ls.json"))
def test_parse_ls(case):
    expect = case["expect"]
    listing = r.parse_ls(case["stdout"])
    assert listing.snapshot is not None
    assert listing.snapshot.short_id == expect["snapshot"]
    assert len(listing.nodes) == expect["nodes"]
    assert [n.path for n in listing.files] == expect["files"]
    assert listing.file_count == len(expect["files"])
    assert listing.file_bytes == expect["file_bytes"]
    types = {n.path: n.type for n in listing.nodes}
    for path, kind in expect["types"].items():
        assert types[path] == kind


def _listing():
    case = json.loads((CASES / "restic_ls.json").read_text())[0]
    return r.parse_ls(case["stdout"])


def test_verify_restore():
    listing = _listing()
    good = {"/tmp/rx/src/a.txt": 6, "/tmp/rx/src/sub/b.bin": 100000, "/extra": 1}
    check = r.verify_restore(listing, good)
    assert check.ok
    assert (check.expected_files, check.expected_bytes) == (2, 100006)
    bad = r.verify_restore(listing, {"/tmp/rx/src/sub/b.bin": 99999})
    assert not bad.ok
    assert bad.missing == ("/tmp/rx/src/a.txt",)
    assert bad.wrong_size == (("/tmp/rx/src/sub/b.bin", 100000, 99999),)
    only = r.verify_restore(listing, {"/tmp/rx/src/sub/b.bin": 100000}, only=["/tmp/rx/src/sub/"])
    assert only.ok
    assert only.expected_files == 1
    # "/tmp/rx/src/s" is not a parent of "/tmp/rx/src/sub/b.bin".
    assert r.verify_restore(listing, {}, only=["/tmp/rx/src/s"]).expected_files == 0


def test_parse_init_and_restore_banner():
    text = (
        "created restic repository ce23b5f31e at /tmp/rx/repo\n\nPlease note that knowledge of "
        "your password is required to access\nthe repository.\n"
    )
    assert r.parse_init(text) == "ce23b5f31e"
    json_form = '{"message_type":"initialized","id":"5b1c0e","repository":"/r"}\n'
    assert r.parse_init(json_form) == "5b1c0e"
    assert r.parse_init("") is None
    banner_014 = (
        "restoring <Snapshot d29e7de5 of [/tmp/rx/src] at 2024-02-01 10:00:00 +0000 UTC by "
        "root@homeserver> to /tmp/rx/restored\n"
    )
    assert r.parse_restore_banner(banner_014) == r.RestoreBanner("d29e7de5", "/tmp/rx/restored")
    banner_017 = (
        "repository 1234 opened (version 2, compression level auto)\nrestoring snapshot "
        "8dc61e23 of [/srv] at 2025-03-01 03:00:00 +0000 UTC by root@h to /restore\n"
    )
    assert r.parse_restore_banner(banner_017) == r.RestoreBanner("8dc61e23", "/restore")
    assert r.parse_restore_banner("nothing\n") is None


# -- integration: the real restic -----------------------------------------------------------


class Repo:
    """A real local repository in a temp dir, and a way to run restic against it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.password = root / "password"
        self.password.write_text("correct horse\n")
        self.path = root / "repo"
        self.restic = r.Restic(program=RESTIC or "restic")

    def env(self, **overrides) -> dict[str, str]:
        base = {**os.environ, "TZ": "UTC"}
        args = {
            "password_file": self.password,
            "repository": str(self.path),
            "cache_dir": self.root / "cache",
            **overrides,
        }
        return r.restic_env(base, **args)

    async def run(self, argv, **env_overrides) -> process.ProcessResult:
        return await process.run(argv, timeout=60, env=self.env(**env_overrides))


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """One initialised repository per session: ``init`` derives a key (~2 s), a copy does not."""
    if RESTIC is None:
        pytest.skip("restic is not installed (apt-get install -y restic)")
    repo = Repo(tmp_path_factory.mktemp("restic-template"))
    version = subprocess.run(
        r.version_argv(repo.restic), capture_output=True, text=True, check=True
    ).stdout
    repo.restic = r.Restic(program=RESTIC, version=r.parse_version(version))
    init = subprocess.run(
        r.init_argv(repo.restic), capture_output=True, text=True, env=repo.env(), check=False
    )
    assert init.returncode == 0, init.stderr
    assert r.parse_init(init.stdout) is not None
    return repo


@pytest.fixture
def repo(template_repo: Repo, tmp_path: Path) -> Repo:
    """A fresh copy of the initialised repository, with its password file."""
    repo = Repo(tmp_path)
    shutil.copytree(template_repo.path, repo.path)
    repo.password.write_text(template_repo.password.read_text())
    repo.restic = template_repo.restic
    return repo


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(50_000))
    (root / "debug.log").write_text("noise\n")
    return root


@pytest.mark.integration
@needs_restic
async def test_real_backup_snapshots_ls_restore(repo: Repo, tmp_path: Path):
    src = _tree(tmp_path / "src")
    argv = r.backup_argv(repo.restic, [src], service="app", tags=["media"], excludes=["*.log"])
    statuses: list[r.BackupStatus] = []

    def on_line(line: str) -> None:
        event = r.parse_backup_line(line)
        if isinstance(event, r.BackupStatus):
            statuses.append(event)

    done = await process.run(argv, timeout=60, env=repo.env(), on_stdout_line=on_line)
    verdict = r.classify_run(done.returncode, done.stderr, version=repo.restic.version)
    assert verdict.outcome is r.ResticOutcome.OK, verdict
    report = r.parse_backup_output(done.stdout, done.stderr)
    assert report.summary is not None
    assert report.summary.files_new == 2  # a.txt and b.bin; debug.log is excluded
    assert report.summary.total_bytes_processed == 50_006
    assert statuses, "restic printed no status line"

    listed = await repo.run(r.snapshots_argv(repo.restic, tag="app"))
    snapshots = r.parse_snapshots(listed.stdout)
    assert len(snapshots) == 1
    assert snapshots[0].id.startswith(report.summary.snapshot_id or "-")
    assert snapshots[0].tags == ("app", "media")
    assert snapshots[0].paths == (str(src),)
    assert (
        r.parse_snapshots((await repo.run(r.snapshots_argv(repo.restic, tag="other"))).stdout) == ()
    )

    ls = await repo.run(r.ls_argv(repo.restic, "latest", tag="app"))
    listing = r.parse_ls(ls.stdout)
    assert listing.snapshot is not None
    assert listing.snapshot.id == snapshots[0].id
    assert sorted(n.path for n in listing.files) == [str(src / "a.txt"), str(src / "sub/b.bin")]
    assert listing.file_bytes == 50_006

    target = tmp_path / "restored"
    restored = await repo.run(r.restore_argv(repo.restic, "latest", target, tag="app"))
    assert restored.returncode == 0, restored.stderr
    banner = r.parse_restore_banner(restored.stdout)
    assert banner is not None
    assert snapshots[0].id.startswith(banner.short_id)
    found = {
        "/" + str(p.relative_to(target)): p.stat().st_size for p in target.rglob("*") if p.is_file()
    }
    assert r.verify_restore(listing, found).ok
    (target / str(src / "a.txt").lstrip("/")).write_text("damaged\n")
    damaged = {
        "/" + str(p.relative_to(target)): p.stat().st_size for p in target.rglob("*") if p.is_file()
    }
    assert r.verify_restore(listing, damaged).wrong_size == ((str(src / "a.txt"), 6, 8),)


@pytest.mark.integration
@needs_restic
async def test_real_forget_keeps_what_the_policy_says(repo: Repo, tmp_path: Path):
    src = _tree(tmp_path / "src")
    # Jan 1-3, two on Jan 2 (TZ=UTC in the env), and another service's snapshot that
    # grouping by tags must leave alone.
    times = [
        "2024-01-01 09:00:00",
        "2024-01-02 09:00:00",
        "2024-01-02 18:00:00",
        "2024-01-03 09:00:00",
    ]
    for when in times:
        done = await repo.run(r.backup_argv(repo.restic, [src], service="app", time=when))
        assert done.returncode == 0, done.stderr
    other = await repo.run(
        r.backup_argv(repo.restic, [src], service="other", time="2024-01-01 08:00:00")
    )
    assert other.returncode == 0, other.stderr

    dry = await repo.run(
        r.forget_argv(repo.restic, tag="app", policy=r.KeepPolicy(daily=2), dry_run=True)
    )
    assert dry.returncode == 0, dry.stderr
    planned = r.parse_forget(dry.stdout)
    assert len(r.parse_snapshots((await repo.run(r.snapshots_argv(repo.restic))).stdout)) == 5

    done = await repo.run(r.forget_argv(repo.restic, tag="app", policy=r.KeepPolicy(daily=2)))
    assert r.classify_run(done.returncode, done.stderr).outcome is r.ResticOutcome.OK
    result = r.parse_forget(done.stdout)
    assert [g.tags for g in result.groups] == [("app",)]
    kept = sorted(s.time.strftime("%m-%d %H") for s in result.kept)
    assert kept == ["01-02 18", "01-03 09"]  # the last snapshot of each of the last 2 days
    removed = sorted(s.time.strftime("%m-%d %H") for s in result.removed)
    assert removed == ["01-01 09", "01-02 09"]
    assert {s.id for s in result.kept} == {s.id for s in planned.kept}
    assert "remaining" in result.prune_output  # --prune ran and printed its text after the JSON

    left = r.parse_snapshots((await repo.run(r.snapshots_argv(repo.restic))).stdout)
    assert sorted((s.tags, s.time.strftime("%d %H")) for s in left) == [
        (("app",), "02 18"),
        (("app",), "03 09"),
        (("other",), "01 08"),
    ]


@pytest.mark.integration
@needs_restic
async def test_real_failures_classify(repo: Repo, tmp_path: Path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    done = await repo.run(r.snapshots_argv(repo.restic), password_file=wrong)
    verdict = r.classify_run(done.returncode, done.stderr, version=repo.restic.version)
    assert verdict.outcome is r.ResticOutcome.WRONG_PASSWORD, done.stderr

    missing = tmp_path / "nowhere"
    done = await repo.run(r.snapshots_argv(repo.restic), repository=str(missing))
    verdict = r.classify_run(
        done.returncode, done.stderr, version=repo.restic.version, repo="local"
    )
    assert verdict.outcome is r.ResticOutcome.REPO_MISSING, done.stderr
    assert verdict.location == str(missing)
    assert verdict.fix == "run `svc init local`"

    again = await repo.run(r.init_argv(repo.restic))
    assert r.classify_run(again.returncode, again.stderr).outcome is r.ResticOutcome.REPO_EXISTS

    src = _tree(tmp_path / "src")
    done = await repo.run(r.backup_argv(repo.restic, [src, tmp_path / "gone"], service="app"))
    verdict = r.classify_run(done.returncode, done.stderr, version=repo.restic.version)
    assert verdict.outcome is r.ResticOutcome.PARTIAL
    assert verdict.missing_sources == (str(tmp_path / "gone"),)

    done = await repo.run(r.backup_argv(repo.restic, [tmp_path / "gone"], service="app"))
    verdict = r.classify_run(done.returncode, done.stderr, version=repo.restic.version)
    assert verdict.outcome is r.ResticOutcome.FAILED
    assert verdict.message.startswith("none of the backup paths exist")


async def _stdin_backup(repo: Repo, **kwargs) -> asyncio.subprocess.Process:
    """A ``backup --stdin`` that holds its (shared) lock until its stdin closes."""
    argv = r.Restic(program=repo.restic.program).argv(
        "backup", "--json", "--stdin", "--stdin-filename", "db.dump", "--tag=app"
    )
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, env=repo.env(), **kwargs
    )
    for _ in range(200):
        if await asyncio.to_thread(lambda: any((repo.path / "locks").iterdir())):
            return proc
        await asyncio.sleep(0.05)
    proc.kill()
    await proc.wait()
    pytest.fail("the stdin backup never took its lock")


@pytest.mark.integration
@needs_restic
async def test_real_lock_held_by_a_running_backup(repo: Repo):
    holder = await _stdin_backup(
        repo, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        # forget needs the repository exclusively, the running backup holds it shared.
        done = await repo.run(r.forget_argv(repo.restic, tag="app", policy=r.KeepPolicy(daily=1)))
        verdict = r.classify_run(done.returncode, done.stderr, version=repo.restic.version)
        assert verdict.outcome is r.ResticOutcome.LOCKED, done.stderr
        assert verdict.lock_holder is not None
        assert verdict.lock_holder.startswith(f"PID {holder.pid} on ")
        # A shared lock does not block another reader.
        listed = await repo.run(r.snapshots_argv(repo.restic))
        assert listed.returncode == 0, listed.stderr
    finally:
        assert holder.stdin is not None
        holder.stdin.write(b"dump\n")
        await holder.stdin.drain()
        holder.stdin.close()
        await asyncio.wait_for(holder.wait(), 30)
    assert holder.returncode == 0


@pytest.mark.integration
@needs_restic
async def test_real_sigint_is_interrupted(repo: Repo):
    proc = await _stdin_backup(
        repo, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert proc.returncode is not None
    verdict = r.classify_run(proc.returncode, stderr.decode(), version=repo.restic.version)
    assert verdict.outcome is r.ResticOutcome.INTERRUPTED, (proc.returncode, stderr)
    assert "SIGINT" in verdict.message
    # Seen here: a SIGINT soon after the lock was taken can leave that lock behind (later
    # ones are cleaned up). Either way `unlock` removes a dead process's lock and the
    # repository is usable again, which is what the verdict's fix tells the user.
    done = await repo.run(r.check_argv(repo.restic))
    first = r.classify_run(done.returncode, done.stderr)
    if first.outcome is r.ResticOutcome.LOCKED:
        assert first.lock_holder is not None
        assert first.lock_holder.startswith(f"PID {proc.pid} on ")
    unlocked = await repo.run(r.unlock_argv(repo.restic))
    assert unlocked.returncode == 0, unlocked.stderr
    done = await repo.run(r.check_argv(repo.restic))
    assert r.classify_run(done.returncode, done.stderr).outcome is r.ResticOutcome.OK, done.stderr


@pytest.fixture
def world_dir():
    """A temp dir another user can reach (pytest's own tmp_path is root-only 0700)."""
    path = Path(tempfile.mkdtemp(prefix="homeops-restic-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def unreadable_setup(world_dir: Path) -> tuple[Repo, Path, list[str]]:
    """A repository, a tree with one unreadable file, and the argv prefix that runs restic
    as a user who cannot read it (as root nothing is unreadable, so that user is nobody)."""
    as_other: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to drop root")
        as_other = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    repo = Repo(world_dir)
    src = _tree(world_dir / "src")
    secret = src / "secret.txt"
    secret.write_text("x\n")
    if os.geteuid() == 0:
        for path in [world_dir, *world_dir.rglob("*")]:
            shutil.chown(path, "nobody", "nogroup")
    secret.chmod(0)
    return repo, secret, as_other


@pytest.mark.integration
@needs_restic
async def test_real_exit_3_names_the_unreadable_file(unreadable_setup):
    repo, secret, as_other = unreadable_setup

    async def run(argv):
        return await process.run([*as_other, *argv], timeout=60, env=repo.env())

    init = await run(r.init_argv(repo.restic))
    assert init.returncode == 0, init.stderr
    done = await run(r.backup_argv(repo.restic, [secret.parent], service="app"))
    verdict = r.classify_run(done.returncode, done.stderr, version=V14)
    assert done.returncode == 3, done.stderr
    assert verdict.outcome is r.ResticOutcome.PARTIAL
    assert verdict.unreadable == (str(secret),)
    report = r.parse_backup_output(done.stdout, done.stderr)
    assert report.summary is not None
    assert report.summary.snapshot_id  # the snapshot was saved all the same
    assert report.errors[0].message.endswith("permission denied")


@pytest.fixture
def sftp_dir():
    """A directory the sshd login user can create a repository in."""
    path = Path(tempfile.mkdtemp(prefix="homeops-sftp-repo-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.integration
@needs_restic
async def test_real_sftp_repository_through_sftp_command(sshd, sftp_dir: Path, tmp_path: Path):
    # The remote repository of issue 8, on the loopback sshd: restic reaches it only through
    # the sftp.command this module builds, which must survive restic's own splitter.
    repo = Repo(tmp_path)
    ssh = [*sshd.ssh_argv(), "-s", "sftp"]  # ssh reads options after the destination
    restic = r.Restic(program=RESTIC or "restic", options=(r.sftp_command_option(ssh),))
    location = f"sftp:{sshd.user}@{sshd.host}:{sftp_dir / 'repo'}"
    missing = await repo.run(r.snapshots_argv(restic), repository=location)
    verdict = r.classify_run(missing.returncode, missing.stderr, repo="remote")
    assert verdict.outcome is r.ResticOutcome.REPO_MISSING, missing.stderr
    assert verdict.location == location
    init = await repo.run(r.init_argv(restic), repository=location)
    assert init.returncode == 0, init.stderr
    src = _tree(tmp_path / "src")
    done = await repo.run(r.backup_argv(restic, [src], service="app"), repository=location)
    assert r.classify_run(done.returncode, done.stderr).outcome is r.ResticOutcome.OK
    listed = await repo.run(r.snapshots_argv(restic, tag="app"), repository=location)
    assert len(r.parse_snapshots(listed.stdout)) == 1
