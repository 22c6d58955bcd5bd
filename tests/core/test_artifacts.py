"""Artifact store: id and path validation, manifest, streaming, fetch verification, sweep."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import stat
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from homeops.core.artifacts import (
    DAY_S,
    Artifact,
    ArtifactStore,
    validate_artifact_path,
    validate_artifact_type,
)
from homeops.core.errors import OperationalError, UsageError

# 2026-11-22T00:00:00Z
T0 = 1795305600.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts", clock=clock)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.rglob(".tmp-*"))


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel_path",
    [
        pytest.param("", id="empty"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("../x", id="parent"),
        pytest.param("a/../../b", id="inner-parent"),
        pytest.param("./a", id="dot-segment"),
        pytest.param("a//b", id="empty-segment"),
        pytest.param("a/", id="trailing-slash"),
        pytest.param("a\\b", id="backslash"),
        pytest.param("..\\x", id="windows-traversal"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\nb", id="newline"),
        pytest.param("manifest.json", id="reserved-manifest"),
        pytest.param(".manifest.lock", id="reserved-lock"),
        pytest.param("sub/.tmp-x", id="reserved-temp-prefix"),
    ],
)
def test_bad_artifact_paths_refused(rel_path: str) -> None:
    with pytest.raises(UsageError, match="invalid artifact path"):
        validate_artifact_path(rel_path)


@pytest.mark.parametrize(
    "rel_path", ["stdout.txt", "screens/shot 1.png", "a/b/c.zip", "sub/manifest.json", "..x"]
)
def test_good_artifact_paths_accepted(rel_path: str) -> None:
    assert validate_artifact_path(rel_path) == rel_path


@pytest.mark.parametrize(
    ("kind", "ok"),
    [
        pytest.param("ssh", True, id="ssh"),
        pytest.param("playwright", True, id="playwright"),
        pytest.param("my_type-2", True, id="underscore-dash"),
        pytest.param("SSH", False, id="upper"),
        pytest.param("2fa", False, id="leading-digit"),
        pytest.param("", False, id="empty"),
        pytest.param("a b", False, id="space"),
    ],
)
def test_artifact_type(kind: str, ok: bool) -> None:
    if ok:
        assert validate_artifact_type(kind) == kind
    else:
        with pytest.raises(UsageError, match="invalid artifact type"):
            validate_artifact_type(kind)


async def test_add_refuses_traversal_before_touching_disk(store: ArtifactStore) -> None:
    with pytest.raises(UsageError):
        await store.add_bytes("../escape", "x.txt", b"x", type="ssh")
    with pytest.raises(UsageError):
        await store.add_bytes("job1", "../x.txt", b"x", type="ssh")
    with pytest.raises(UsageError):
        await store.add_bytes("job1", "x.txt", b"x", type="Bad Type")
    assert not store.root.joinpath("job1", "x.txt").exists()
    assert not store.root.parent.joinpath("x.txt").exists()


# -- manifest -----------------------------------------------------------------------------


async def test_manifest_written_exactly(store: ArtifactStore, clock: Clock) -> None:
    clock.now = T0 + 0.25
    store.ensure_job("job1", "trace-abc")
    clock.now = T0 + 99
    out = await store.add_bytes("job1", "stdout.txt", b"hello\n", type="ssh")
    err = await store.add_bytes("job1", "stderr.txt", b"", type="ssh")
    code = await store.add_bytes("job1", "exit_code.txt", b"0\n", type="ssh")
    assert out == Artifact("ssh", "stdout.txt", 6, sha(b"hello\n"))
    doc = json.loads((store.root / "job1" / "manifest.json").read_text())
    assert doc == {
        "job_id": "job1",
        "trace_id": "trace-abc",
        "created_at": "2026-11-22T00:00:00.250Z",
        "artifacts": [
            {"type": "ssh", "path": "stdout.txt", "size_bytes": 6, "sha256": sha(b"hello\n")},
            {"type": "ssh", "path": "stderr.txt", "size_bytes": 0, "sha256": sha(b"")},
            {"type": "ssh", "path": "exit_code.txt", "size_bytes": 2, "sha256": sha(b"0\n")},
        ],
    }
    assert list(doc) == ["job_id", "trace_id", "created_at", "artifacts"]
    assert store.manifest("job1").artifacts == (out, err, code)
    assert (store.root / "job1" / "stdout.txt").read_bytes() == b"hello\n"
    assert leftovers(store.root) == []


async def test_trace_id_recorded_once(store: ArtifactStore) -> None:
    first = store.ensure_job("job1", "trace-1")
    again = store.ensure_job("job1", "trace-2")
    assert first == again
    assert store.manifest("job1").trace_id == "trace-1"


async def test_add_without_ensure_creates_manifest(store: ArtifactStore) -> None:
    await store.add_bytes("job2", "response.json", b"{}", type="aloha")
    manifest = store.manifest("job2")
    assert manifest.trace_id == ""
    assert [a.path for a in manifest.artifacts] == ["response.json"]


async def test_re_adding_a_path_replaces_its_entry(store: ArtifactStore) -> None:
    await store.add_bytes("job1", "stdout.txt", b"one", type="ssh")
    await store.add_bytes("job1", "stdout.txt", b"second", type="ssh")
    artifacts = store.manifest("job1").artifacts
    assert artifacts == (Artifact("ssh", "stdout.txt", 6, sha(b"second")),)


async def test_nested_paths_and_permissions(store: ArtifactStore) -> None:
    await store.add_bytes("job1", "shots/a/screenshot.png", b"\x89PNG", type="playwright")
    job_dir = store.root / "job1"
    assert (job_dir / "shots" / "a" / "screenshot.png").read_bytes() == b"\x89PNG"
    assert stat.S_IMODE(job_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((job_dir / "manifest.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((job_dir / "shots/a/screenshot.png").stat().st_mode) == 0o600


async def test_add_file_copies(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "trace.zip"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    art = await store.add_file("job1", "trace.zip", src, type="playwright")
    assert art == Artifact("playwright", "trace.zip", len(data), sha(data))
    assert src.read_bytes() == data
    assert (store.root / "job1" / "trace.zip").read_bytes() == data


async def test_add_file_missing_source(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(OperationalError, match="cannot read"):
        await store.add_file("job1", "x.bin", tmp_path / "nope", type="ssh")
    assert leftovers(store.root) == []
    assert not (store.root / "job1" / "x.bin").exists()


async def test_add_stream_large_in_constant_memory(store: ArtifactStore) -> None:
    chunk = b"0123456789abcdef" * 65536  # 1 MiB
    count = 50
    expected = hashlib.sha256()
    for _ in range(count):
        expected.update(chunk)

    def gen() -> Iterator[bytes]:
        for _ in range(count):
            # A fresh object per chunk, as a network read would produce.
            yield bytes(bytearray(chunk))

    tracemalloc.start()
    try:
        art = await store.add_stream("job1", "big.bin", gen(), type="ssh")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert art.size_bytes == count * len(chunk)
    assert art.sha256 == expected.hexdigest()
    assert (store.root / "job1" / "big.bin").stat().st_size == count * len(chunk)
    # Buffering the whole stream would peak at 50 MiB or more.
    assert peak < 8 * 1024 * 1024


async def test_add_stream_async_iterable(store: ArtifactStore) -> None:
    async def gen() -> AsyncIterator[bytes]:
        for part in (b"a" * 10, b"b" * 5, b""):
            await asyncio.sleep(0)
            yield part

    art = await store.add_stream("job1", "out.txt", gen(), type="ssh")
    assert art == Artifact("ssh", "out.txt", 15, sha(b"a" * 10 + b"b" * 5))


async def test_add_stream_failure_leaves_nothing(store: ArtifactStore) -> None:
    async def gen() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("peer went away")

    with pytest.raises(RuntimeError, match="peer went away"):
        await store.add_stream("job1", "out.txt", gen(), type="ssh")
    assert not (store.root / "job1" / "out.txt").exists()
    assert leftovers(store.root) == []


async def test_concurrent_tasks_lose_no_entry(store: ArtifactStore) -> None:
    store.ensure_job("job1", "t")
    await asyncio.gather(
        *(store.add_bytes("job1", f"f{i}.txt", str(i).encode(), type="ssh") for i in range(30))
    )
    paths = sorted(a.path for a in store.manifest("job1").artifacts)
    assert paths == sorted(f"f{i}.txt" for i in range(30))


def test_concurrent_stores_lose_no_entry(tmp_path: Path) -> None:
    """Two stores share nothing in memory, as two processes would: only flock orders them."""
    root = tmp_path / "artifacts"
    ArtifactStore(root).ensure_job("job1", "t")
    errors: list[BaseException] = []

    def worker(prefix: str) -> None:
        store = ArtifactStore(root)

        async def go() -> None:
            for i in range(25):
                await store.add_bytes("job1", f"{prefix}{i}.txt", b"x", type="ssh")

        try:
            asyncio.run(go())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(ArtifactStore(root).manifest("job1").artifacts) == 75


# -- reading ------------------------------------------------------------------------------


async def test_list_jobs(store: ArtifactStore, tmp_path: Path) -> None:
    assert store.list_jobs() == []
    store.ensure_job("b-job", "t")
    store.ensure_job("a-job", "t")
    (store.root / "stray-file").write_text("x")
    (store.root / ".hidden").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "linked").symlink_to(outside)
    assert store.list_jobs() == ["a-job", "b-job"]


def test_manifest_of_unknown_job(store: ArtifactStore) -> None:
    with pytest.raises(UsageError, match="no artifacts for job 'nope'"):
        store.manifest("nope")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(b"{not json", "not JSON", id="not-json"),
        pytest.param(b"[]", "not an object", id="list"),
        pytest.param(b"\xff\xfe", "not JSON", id="binary"),
        pytest.param(
            json.dumps(
                {"job_id": "job1", "trace_id": "", "created_at": "2026-11-22T00:00:00Z"}
            ).encode(),
            "'artifacts'",
            id="no-artifacts",
        ),
        pytest.param(
            json.dumps(
                {
                    "job_id": "job1",
                    "trace_id": "",
                    "created_at": "2026-11-22T00:00:00Z",
                    "artifacts": [
                        {"type": "ssh", "path": "../../x", "size_bytes": 1, "sha256": "0" * 64}
                    ],
                }
            ).encode(),
            "invalid artifact path",
            id="traversal-entry",
        ),
        pytest.param(
            json.dumps(
                {"job_id": "job1", "trace_id": "", "created_at": "yesterday", "artifacts": []}
            ).encode(),
            "yesterday",
            id="bad-created-at",
        ),
        pytest.param(
            json.dumps(
                {
                    "job_id": "other",
                    "trace_id": "",
                    "created_at": "2026-11-22T00:00:00Z",
                    "artifacts": [],
                }
            ).encode(),
            "does not match directory",
            id="wrong-job-id",
        ),
    ],
)
async def test_corrupt_manifest_names_file(
    store: ArtifactStore, content: bytes, reason: str
) -> None:
    store.ensure_job("job1", "t")
    path = store.root / "job1" / "manifest.json"
    path.write_bytes(content)
    with pytest.raises(OperationalError) as info:
        store.manifest("job1")
    message = str(info.value)
    assert message.startswith(f"{path}: corrupt manifest")
    assert reason in message
    assert "\n" not in message
    # An add must not overwrite a manifest it cannot read: that would drop the old entries.
    with pytest.raises(OperationalError, match="corrupt manifest"):
        await store.add_bytes("job1", "x.txt", b"x", type="ssh")
    assert path.read_bytes() == content
    assert not (store.root / "job1" / "x.txt").exists()
    assert leftovers(store.root) == []


async def test_fetch_copies_and_verifies(store: ArtifactStore, tmp_path: Path) -> None:
    await store.add_bytes("job1", "stdout.txt", b"out", type="ssh")
    await store.add_bytes("job1", "shots/screenshot.png", b"png", type="playwright")
    out = tmp_path / "out"
    got = store.fetch("job1", out)
    assert got == [out / "stdout.txt", out / "shots" / "screenshot.png"]
    assert (out / "stdout.txt").read_bytes() == b"out"
    assert (out / "shots" / "screenshot.png").read_bytes() == b"png"
    # The store's own bookkeeping files are not artifacts.
    assert sorted(p.name for p in out.rglob("*")) == ["screenshot.png", "shots", "stdout.txt"]


@pytest.mark.parametrize(
    "tampered",
    [
        pytest.param(b"OUT", id="same-size"),
        pytest.param(b"out plus more", id="longer"),
        pytest.param(b"ou", id="shorter"),
    ],
)
async def test_fetch_refuses_tampered_file(
    store: ArtifactStore, tmp_path: Path, tampered: bytes
) -> None:
    await store.add_bytes("job1", "a.txt", b"fine", type="ssh")
    await store.add_bytes("job1", "stdout.txt", b"out", type="ssh")
    (store.root / "job1" / "stdout.txt").write_bytes(tampered)
    out = tmp_path / "out"
    with pytest.raises(OperationalError) as info:
        store.fetch("job1", out)
    assert str(store.root / "job1" / "stdout.txt") in str(info.value)
    assert "mismatch" in str(info.value)
    assert not (out / "stdout.txt").exists()
    assert leftovers(out) == []


async def test_fetch_missing_file(store: ArtifactStore, tmp_path: Path) -> None:
    await store.add_bytes("job1", "sub/stdout.txt", b"out", type="ssh")
    (store.root / "job1" / "sub" / "stdout.txt").unlink()
    with pytest.raises(OperationalError, match=r"stdout\.txt: missing"):
        store.fetch("job1", tmp_path / "out")


async def test_fetch_refuses_symlinked_artifact(store: ArtifactStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"out")
    await store.add_bytes("job1", "stdout.txt", b"out", type="ssh")
    target = store.root / "job1" / "stdout.txt"
    target.unlink()
    target.symlink_to(secret)
    with pytest.raises(OperationalError):
        store.fetch("job1", tmp_path / "out")
    assert not (tmp_path / "out" / "stdout.txt").exists()


# -- symlink safety on write --------------------------------------------------------------


async def test_add_refuses_symlinked_subdir(store: ArtifactStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store.ensure_job("job1", "t")
    (store.root / "job1" / "sub").symlink_to(outside)
    with pytest.raises(OperationalError, match="refusing to follow"):
        await store.add_bytes("job1", "sub/x.txt", b"x", type="ssh")
    assert list(outside.iterdir()) == []


async def test_refuses_symlinked_job_dir(store: ArtifactStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store.root.mkdir(parents=True)
    (store.root / "job1").symlink_to(outside)
    with pytest.raises(OperationalError, match="refusing"):
        store.ensure_job("job1", "t")
    with pytest.raises(OperationalError, match="refusing"):
        store.manifest("job1")
    assert list(outside.iterdir()) == []


# -- retention ----------------------------------------------------------------------------


async def test_sweep_by_manifest_age(store: ArtifactStore, clock: Clock) -> None:
    clock.now = T0
    store.ensure_job("old", "t")
    await store.add_bytes("old", "stdout.txt", b"x", type="ssh")
    clock.now = T0 + 5 * DAY_S
    store.ensure_job("young", "t")
    clock.now = T0 + 7 * DAY_S + 1
    assert store.sweep(7) == ["old"]
    assert store.list_jobs() == ["young"]
    clock.now = T0 + 12 * DAY_S + 1
    assert store.sweep(7) == ["young"]
    assert store.list_jobs() == []


async def test_sweep_exact_boundary_keeps(store: ArtifactStore, clock: Clock) -> None:
    store.ensure_job("job1", "t")
    clock.now = T0 + 7 * DAY_S
    assert store.sweep(7) == []


@pytest.mark.parametrize(
    "manifest",
    [
        pytest.param(None, id="no-manifest"),
        pytest.param(b"garbage", id="corrupt"),
        pytest.param(
            json.dumps(
                {"job_id": "other", "trace_id": "", "created_at": "2020-01-01T00:00:00Z",
                 "artifacts": []}
            ).encode(),
            id="other-jobs-manifest",
        ),
    ],
)  # fmt: skip
def test_sweep_keeps_dirs_without_a_valid_manifest(
    store: ArtifactStore, clock: Clock, manifest: bytes | None, log_stream: io.StringIO
) -> None:
    """An old directory is not a job's unless its own manifest says so: age alone is no proof."""
    store.ensure_job("expired", "t")
    job_dir = store.root / "stale"
    job_dir.mkdir(parents=True)
    (job_dir / "keep.txt").write_text("mine")
    if manifest is not None:
        (job_dir / "manifest.json").write_bytes(manifest)
    old = T0 - 100 * DAY_S
    os.utime(job_dir, (old, old))
    clock.now = T0 + 10 * DAY_S
    assert store.sweep(7) == ["expired"]
    assert (job_dir / "keep.txt").read_text() == "mine"
    # Without a manifest it is not even listed as a job; a bad one is worth a warning.
    assert store.list_jobs() == ([] if manifest is None else ["stale"])
    assert ("directory kept" in log_stream.getvalue()) is (manifest is not None)


def test_sweep_rejects_negative_retention(store: ArtifactStore) -> None:
    with pytest.raises(UsageError):
        store.sweep(-1)


def test_sweep_on_missing_root(store: ArtifactStore) -> None:
    assert store.sweep(7) == []


async def test_sweep_never_leaves_root(store: ArtifactStore, clock: Clock, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    old = T0 - 30 * DAY_S
    os.utime(outside, (old, old))
    store.ensure_job("job1", "t")
    # A symlink in root that looks like an old job dir.
    store.root.joinpath("evil").symlink_to(outside)
    # A symlink inside a real (expiring) job dir that points outside.
    store.root.joinpath("job1", "escape").symlink_to(outside)
    clock.now = T0 + 100 * DAY_S
    assert store.sweep(7) == ["job1"]
    assert (outside / "precious.txt").read_text() == "keep me"
    assert store.root.joinpath("evil").is_symlink()


# -- hostile store contents ---------------------------------------------------------------


async def test_sweep_deletes_only_job_dirs_it_made(tmp_path: Path, clock: Clock) -> None:
    """A root misconfigured to a home directory: old photos/ docs/ src/ there survive."""
    home = tmp_path / "home"
    store = ArtifactStore(home, clock=clock)
    store.ensure_job("job1", "t")
    for name in ("photos", "docs", "src", "job2"):
        (home / name).mkdir()
        (home / name / "precious.txt").write_text(name)
        old = T0 - 100 * DAY_S
        os.utime(home / name, (old, old))
    clock.now = T0 + 10 * DAY_S
    assert store.sweep(7) == ["job1"]
    assert sorted(p.name for p in home.iterdir()) == ["docs", "job2", "photos", "src"]
    assert store.list_jobs() == []


@pytest.mark.timeout(20)  # the bug was a hang: fail in seconds, not at the suite's limit
async def test_fifo_manifest_refused_without_waiting(
    store: ArtifactStore, tmp_path: Path, clock: Clock
) -> None:
    store.ensure_job("job1", "t")
    manifest = store.root / "job1" / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(
        OperationalError, match=r"manifest\.json: cannot read manifest: not a regular"
    ):
        store.manifest("job1")
    with pytest.raises(OperationalError, match="not a regular file"):
        store.fetch("job1", tmp_path / "out")
    with pytest.raises(OperationalError, match="not a regular file"):
        await store.add_bytes("job1", "x.txt", b"x", type="ssh")
    clock.now = T0 + 100 * DAY_S
    assert store.sweep(7) == []
    assert stat.S_ISFIFO(manifest.lstat().st_mode)
    assert len(os.listdir("/proc/self/fd")) == before, "file descriptor leaked"


@pytest.mark.timeout(20)
async def test_fifo_artifact_refused_without_waiting(store: ArtifactStore, tmp_path: Path) -> None:
    await store.add_bytes("job1", "stdout.txt", b"out", type="ssh")
    target = store.root / "job1" / "stdout.txt"
    target.unlink()
    os.mkfifo(target)
    with pytest.raises(OperationalError, match=r"stdout\.txt: cannot read: not a regular file"):
        store.fetch("job1", tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


async def test_manifest_symlink_not_followed(store: ArtifactStore, tmp_path: Path) -> None:
    """A manifest.json swapped for a symlink is refused even when it points at a valid one."""
    store.ensure_job("job1", "t")
    manifest = store.root / "job1" / "manifest.json"
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(manifest.read_bytes())  # this very job's manifest: it would parse
    manifest.unlink()
    manifest.symlink_to(elsewhere)
    with pytest.raises(OperationalError, match=r"manifest\.json: cannot read manifest: "):
        store.manifest("job1")
    with pytest.raises(OperationalError, match=r"manifest\.json: cannot read manifest: "):
        await store.add_bytes("job1", "x.txt", b"x", type="ssh")
    assert json.loads(elsewhere.read_bytes())["artifacts"] == []
    assert manifest.is_symlink()


@pytest.mark.parametrize("out", ["/proc", "/sys/kernel"])
async def test_fetch_into_unwritable_dir_is_one_error(store: ArtifactStore, out: str) -> None:
    await store.add_bytes("job1", "stdout.txt", b"out", type="ssh")
    with pytest.raises(OperationalError) as info:
        store.fetch("job1", Path(out))
    assert str(info.value).startswith(f"{out}: cannot write: ")
    assert "\n" not in str(info.value)


def test_root_that_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "afile"
    root.write_text("x")
    store = ArtifactStore(root)
    with pytest.raises(OperationalError, match="artifact root is not a directory"):
        store.manifest("job1")
    with pytest.raises(OperationalError, match="cannot list artifacts: Not a directory"):
        store.list_jobs()
    with pytest.raises(OperationalError, match="cannot create"):
        store.ensure_job("job1", "t")


def test_manifest_readers_never_see_a_partial_write(tmp_path: Path) -> None:
    """Manifests are replaced by rename: a reader sees the old or the new one, never half.

    Written in place, about a third of concurrent reads saw a truncated file.
    """
    root = tmp_path / "artifacts"
    writer = ArtifactStore(root)
    writer.ensure_job("job1", "t")
    manifest = root / "job1" / "manifest.json"
    # ~16 KB of entries, so each rewrite is a sizeable write.
    doc = json.loads(manifest.read_bytes())
    doc["artifacts"] = [
        {"type": "ssh", "path": f"old/{i:04d}.txt", "size_bytes": i, "sha256": sha(b"%d" % i)}
        for i in range(120)
    ]
    manifest.write_text(json.dumps(doc, indent=2))
    writes = 150
    reads = 0
    torn: list[str] = []
    done = threading.Event()

    def read_until_done() -> None:
        nonlocal reads
        reader = ArtifactStore(root)
        while not done.is_set():
            try:
                reader.manifest("job1")
            except OperationalError as exc:
                torn.append(str(exc))
            reads += 1

    thread = threading.Thread(target=read_until_done)
    thread.start()
    try:
        for i in range(writes):
            seen = reads
            asyncio.run(writer.add_bytes("job1", f"new{i}.txt", b"x", type="ssh"))
            # At least one read per write, so the test cannot pass by never reading.
            while reads == seen and thread.is_alive():
                os.sched_yield()
    finally:
        done.set()
        thread.join()
    assert reads >= writes
    assert torn == []
    assert len(writer.manifest("job1").artifacts) == 120 + writes


async def test_sweep_that_cannot_delete_everything_fails_and_hides_the_half_deleted_dir(
    store: ArtifactStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An immutable file (chattr +i) stopped rmtree half-way: the sweep said "removed: []" with
    # exit 0 and left a job dir whose manifest listed a deleted file.
    import shutil as real_shutil

    clock.now = T0
    store.ensure_job("stuck", "t")
    await store.add_bytes("stuck", "log.txt", b"x", type="ssh")
    await store.add_bytes("stuck", "keep.bin", b"y", type="ssh")
    clock.now = T0 + 8 * DAY_S
    real_rmtree = real_shutil.rmtree

    def half_rmtree(path: str | os.PathLike[str], **kw: object) -> None:
        # Delete one file, then fail on the next as EPERM would.
        target = Path(path)
        (target / "ssh" / "log.txt").unlink(missing_ok=True)
        handler = kw.get("onexc") or kw.get("onerror")
        exc = PermissionError(1, "Operation not permitted", str(target / "ssh" / "keep.bin"))
        if not callable(handler):
            raise exc
        if "onexc" in kw:
            handler(os.unlink, exc.filename, exc)
        else:
            handler(os.unlink, exc.filename, (type(exc), exc, None))

    monkeypatch.setattr("homeops.core.artifacts.shutil.rmtree", half_rmtree)
    with pytest.raises(OperationalError) as info:
        store.sweep(7)
    message = str(info.value)
    assert "keep.bin: Operation not permitted" in message
    assert str(store.root) in message
    assert "\n" not in message
    # Not listed (so never fetched) as a job whose manifest lies about its files.
    assert store.list_jobs() == []
    # Once the file can go, the next sweep finishes the job.
    monkeypatch.setattr("homeops.core.artifacts.shutil.rmtree", real_rmtree)
    assert store.sweep(7) == []
    assert sorted(os.listdir(store.root)) == []


async def test_fetch_does_not_write_through_a_symlinked_subdir_of_out(
    store: ArtifactStore, tmp_path: Path
) -> None:
    store.ensure_job("j", "t")
    await store.add_bytes("j", "ssh/stdout.txt", b"data", type="ssh")
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "ssh").symlink_to(elsewhere)
    with pytest.raises(UsageError, match="is a symlink; refusing to write through it"):
        store.fetch("j", out)
    assert list(elsewhere.iterdir()) == []
    # A real directory there is fine.
    (out / "ssh").unlink()
    assert store.fetch("j", out) == [out / "ssh" / "stdout.txt"]
    assert (out / "ssh" / "stdout.txt").read_bytes() == b"data"


# -- batches and durability order -----------------------------------------------------------


async def test_add_many_lists_every_file_in_one_manifest(store: ArtifactStore) -> None:
    files = {"ssh/stdout.txt": b"hi\n", "ssh/stderr.txt": b"", "ssh/exit_code.txt": b"0\n"}
    added = await store.add_many("job-1", files, type="ssh", trace_id="t-1")
    assert [a.path for a in added] == list(files)
    manifest = store.manifest("job-1")
    assert manifest.trace_id == "t-1"
    assert {a.path: a.sha256 for a in manifest.artifacts} == {p: sha(d) for p, d in files.items()}
    for rel, data in files.items():
        assert (store.job_dir("job-1") / rel).read_bytes() == data
    assert leftovers(store.root) == []
    assert await store.add_many("job-1", {}, type="ssh") == []


async def test_add_many_with_one_bad_path_stores_nothing(store: ArtifactStore) -> None:
    with pytest.raises(UsageError):
        await store.add_many("job-1", {"ok.txt": b"a", "../escape": b"b"}, type="ssh")
    assert not store.job_dir("job-1").exists() or store.manifest("job-1").artifacts == ()


class OrderCheck:
    """A flusher that records, at each flush, which final names exist and what is listed."""

    def __init__(self, store: ArtifactStore, job_id: str, names: list[str]) -> None:
        self.store, self.job_id, self.names = store, job_id, names
        self.seen: list[tuple[list[bool], int]] = []

    def flush(self, paths: object) -> None:
        job_dir = self.store.job_dir(self.job_id)
        manifest = job_dir / "manifest.json"
        listed = len(json.loads(manifest.read_text())["artifacts"]) if manifest.exists() else 0
        self.seen.append(([(job_dir / n).exists() for n in self.names], listed))


async def test_file_bytes_are_flushed_before_the_manifest_lists_them(
    store: ArtifactStore,
) -> None:
    names = ["a.txt", "d/b.txt"]
    check = OrderCheck(store, "job-1", names)
    store.flusher = check  # type: ignore[assignment]
    await store.add_many("job-1", dict.fromkeys(names, b"x"), type="ssh")
    # First flush: the data (temp files and the new manifest), before any rename; the
    # second: the renames.
    assert check.seen == [([False, False], 0), ([True, True], 2)]
