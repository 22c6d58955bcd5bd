"""services.json as `svc` reads it: the seed's records, repositories, errors naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.windows.test_exec import run_win


def run_svc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from homeops.cli import run_console

    try:
        code = run_console("svc", list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "services.json"
    path.write_text(json.dumps(data))
    return path


SEED_RECORD: dict[str, Any] = {
    "name": "immich",
    "compose": {"enable": True, "path": None, "networks": ["proxy"], "volumes": ["immich-db"]},
    "backup": {
        "enable": True,
        "paths": ["/srv/immich/library"],
        "volumes": ["immich-db"],
        "tags": ["photos"],
        "pre": "docker exec immich-db pg_dumpall > /srv/immich/dump.sql",
        "post": "rm -f /srv/immich/dump.sql",
        "exclude": ["*.log"],
        "policy": {"daily": 10, "weekly": 4, "monthly": 4},
    },
}


def test_the_seeds_record_loads_and_defaults_fill_in(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path
) -> None:
    config = write(tmp_path, {"services": {"immich": SEED_RECORD, "plain": {}}})
    code, out, err = run_svc(capsys, "--config", str(config), "config", "show", "--json")
    assert code == 0, err
    settings = json.loads(out)["settings"]
    services = settings["services.services"]["value"]
    assert services["immich"]["backup"]["policy"] == {"daily": 10, "weekly": 4, "monthly": 4}
    assert services["plain"]["backup"]["enable"] is False
    assert services["plain"]["compose"]["enable"] is True
    assert settings["services.services_root"]["value"] == "/var/lib/docker-services"
    assert settings["services.tools.restic"]["value"] == "restic"


def test_compose_file_defaults_under_the_services_root() -> None:
    from homeops.services.settings import SvcSettings

    settings = SvcSettings.model_validate(
        {"services": {"web": {}, "db": {"compose": {"path": "/etc/db/compose.yml"}}}}
    )
    assert settings.compose_file("web") == Path("/var/lib/docker-services/web/docker-compose.yml")
    assert settings.compose_file("db") == Path("/etc/db/compose.yml")


@pytest.mark.parametrize(
    ("services", "field", "reason"),
    [
        pytest.param(
            {"web": {"backup": {"policy": {"daily": -1}}}},
            "services.web.backup.policy.daily",
            "greater than or equal to 0",
            id="negative-policy",
        ),
        pytest.param(
            {"web": {"backup": {"paths": ["relative/dir"]}}},
            "services.web.backup.paths.0",
            "must be an absolute path",
            id="relative-path",
        ),
        pytest.param(
            {"web": {"backup": {"tags": ["a,b"]}}},
            "services.web.backup.tags.0",
            "no commas",
            id="tag-with-comma",
        ),
        pytest.param(
            {"web": {"backup": {"enable": True}}},
            "services.web.backup",
            "needs paths or volumes",
            id="enabled-without-anything",
        ),
        pytest.param({"Web!": {}}, "services.Web!", "a service name is", id="bad-service-name"),
        pytest.param(
            {"web": {"compose": {"volumes": ["bad name"]}}},
            "services.web.compose.volumes.0",
            "not a docker volume",
            id="bad-volume",
        ),
        pytest.param(
            {"web": {"backup": {"paths": ["/x"], "enable": "yes"}}},
            "services.web.backup.enable",
            "valid boolean",
            id="string-bool",
        ),
        pytest.param(
            {"web": {"bakup": {}}}, "services.web.bakup", "Extra inputs", id="unknown-key"
        ),
        pytest.param(
            {"web": {"backup": {"enable": True, "paths": ["/srv/a", "/tmp/a\u0000b"]}}},
            "services.web.backup.paths.1",
            "a path cannot contain a NUL byte",
            id="nul-in-backup-path",
        ),
        pytest.param(
            {"web": {"compose": {"path": "/srv/web/\u0000.yml"}}},
            "services.web.compose.path",
            "a path cannot contain a NUL byte",
            id="nul-in-compose-path",
        ),
    ],
)
def test_errors_name_the_service_and_the_field(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    state_dir: Path,
    services: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    config = write(tmp_path, {"services": services})
    code, out, err = run_svc(capsys, "--config", str(config), "config", "show")
    assert (code, out) == (2, ""), err
    assert err.count("\n") == 1, err
    assert err.startswith(f"config error: {config}: {field}: "), err
    assert reason in err


def test_a_name_that_differs_from_its_key_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path
) -> None:
    config = write(tmp_path, {"services": {"web": {"name": "other"}}})
    code, _, err = run_svc(capsys, "--config", str(config), "config", "show")
    assert code == 2
    assert "services.web.name is 'other', not its key" in err


def test_a_tag_that_is_another_services_name_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path
) -> None:
    """Snapshots are found by the service's name as a tag: a tag naming another service
    would make that one's restore and forget take these snapshots for its own."""
    services = {"multi": {"backup": {"tags": ["other"]}}, "other": {}}
    config = write(tmp_path, {"services": services})
    code, out, err = run_svc(capsys, "--config", str(config), "config", "show")
    assert (code, out) == (2, ""), err
    assert err.count("\n") == 1, err
    assert "services.multi.backup.tags: 'other' is the name of another service" in err
    # Its own name as a tag is only said twice, and a tag naming no service is fine.
    services = {"multi": {"backup": {"tags": ["multi", "media"]}}, "other": {}}
    config = write(tmp_path, {"services": services})
    code, _, err = run_svc(capsys, "--config", str(config), "config", "show")
    assert code == 0, err


def test_repository_needs_one_location(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path
) -> None:
    both = {"repository": "/r", "repository_file": "/r.txt", "password_file": "/pw"}
    config = write(tmp_path, {"repositories": {"local": both}})
    code, _, err = run_svc(capsys, "--config", str(config), "config", "show")
    assert code == 2
    assert "repositories.local" in err and "not both" in err


@pytest.mark.parametrize(
    ("location", "says"),
    [
        ("/srv/restic\n", "trailing whitespace"),
        (" /srv/restic", "leading or trailing whitespace"),
        ("/srv/re\nstic", "one line"),
    ],
)
def test_a_repository_location_restic_would_misread_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path, location: str, says: str
) -> None:
    """restic keeps whitespace around a location: "/srv/restic\n" would be a second
    repository next to the one meant, so it is refused at load, naming the field."""
    config = write(tmp_path, {"repositories": {"local": {"repository": location}}})
    code, out, err = run_svc(capsys, "--config", str(config), "config", "show")
    assert (code, out) == (2, ""), err
    assert err.startswith(f"config error: {config}: repositories.local.repository: "), err
    assert says in err


def test_environment_overrides_a_scalar(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write(tmp_path, {"repositories": {"local": {"repository": "/from/file"}}})
    monkeypatch.setenv("SVC_REPOSITORIES_LOCAL_REPOSITORY", "/from/env")
    code, out, err = run_svc(capsys, "--config", str(config), "config", "show", "--json")
    assert code == 0, err
    shown = json.loads(out)["settings"]["services.repositories.local.repository"]
    assert shown == {"value": "/from/env", "source": "env:SVC_REPOSITORIES_LOCAL_REPOSITORY"}


def test_svc_config_env_names_the_file(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write(tmp_path, {"services": {"web": {}}})
    monkeypatch.setenv("SVC_CONFIG", str(config))
    code, out, err = run_svc(capsys, "config", "show", "--json")
    assert code == 0, err
    assert json.loads(out)["settings"]["services.services"]["value"] == {
        "web": json.loads(out)["settings"]["services.services"]["value"]["web"]
    }
    assert json.loads(out)["settings"]["services.services"]["source"] == f"file:{config}"


def test_the_default_file_is_read_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from homeops.core.config import load_settings
    from homeops.services.settings import SPEC

    default = write(tmp_path, {"services": {"web": {}}})
    spec = dataclasses.replace(SPEC, default_config=default)
    assert spec.seed_file({}) == default
    assert spec.seed_file({"SVC_CONFIG": "/elsewhere.json"}) == Path("/elsewhere.json")
    missing = dataclasses.replace(SPEC, default_config=tmp_path / "absent.json")
    assert missing.seed_file({}) is None
    loaded = load_settings(spec, environ={}, config_path=spec.seed_file({}))
    assert list(loaded.settings.services) == ["web"]


def test_homeops_svc_reads_the_services_section_of_its_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path
) -> None:
    umbrella = tmp_path / "homeops.json"
    umbrella.write_text(json.dumps({"services": {"services": {"web": {}}}}))
    code, out, err = run_win(capsys, "--help")  # the windows tool is unaffected
    assert code == 0, err
    from tests.core.test_cli import run_main

    code, out, err = run_main(capsys, "svc", "config", "show", "--json", "--config", str(umbrella))
    assert code == 0, err
    assert "web" in json.loads(out)["settings"]["services.services"]["value"]


def test_a_newline_in_a_backup_path_is_kept(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path
) -> None:
    # Legal in a Linux path, and restic gets each path as one argv word after `--`.
    paths = ["/srv/a\nb", "/srv/tab\there"]
    config = write(tmp_path, {"services": {"web": {"backup": {"enable": True, "paths": paths}}}})
    code, out, err = run_svc(capsys, "--config", str(config), "config", "show", "--json")
    assert code == 0, err
    shown = json.loads(out)["settings"]["services.services"]["value"]["web"]["backup"]["paths"]
    assert shown == paths


def test_all_is_not_a_service_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path
) -> None:
    config = write(tmp_path, {"services": {"web": {}, "all": {}}})
    code, out, err = run_svc(capsys, "--config", str(config), "list")
    assert (code, out) == (2, ""), err
    assert err == (
        f"config error: {config}: services.all: 'all' is reserved "
        "(it means every service on the command line)\n"
    )


@pytest.mark.parametrize("field", ["hook_timeout", "restic_timeout"])
def test_timeouts_have_an_upper_bound(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    field: str,
) -> None:
    config = write(tmp_path, {field: "99999999999999999d"})
    code, out, err = run_svc(capsys, "--config", str(config), "config", "show")
    assert (code, out) == (2, ""), err
    assert err == (
        f'config error: {config}: {field}: must be at most 30d (got "99999999999999999d")\n'
    )
    config = write(tmp_path, {field: "30d"})
    code, out, err = run_svc(capsys, "--config", str(config), "config", "show", "--json")
    assert code == 0, err
    assert json.loads(out)["settings"][f"services.{field}"]["value"] == "30d"
    monkeypatch.setenv(f"SVC_{field.upper()}", "31d")
    code, _out, err = run_svc(capsys, "--config", str(config), "config", "show")
    assert code == 2
    assert f"SVC_{field.upper()}: {field}: must be at most 30d" in err


def test_a_bad_structured_variable_is_blamed_on_the_variable(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write(tmp_path, {"services": {"web": {}}})
    monkeypatch.setenv("SVC_SERVICES", '{"A B": {}}')
    code, out, err = run_svc(capsys, "--config", str(config), "list")
    assert (code, out) == (2, "")
    assert err.startswith("config error: SVC_SERVICES: services.A B"), err
