"""Domain records end to end: the namespaced umbrella file, seed tools' own files and names,
settings reached through the context, lazily built sub-apps, presets of the core commands."""

import json
import os
from pathlib import Path

import pytest
import typer
from pydantic import Field, SecretStr

import homeops.cli as cli
from homeops.core.config import Port, Section, SettingsSpec
from homeops.core.health import Check, CheckOutcome, Status
from homeops.core.registry import Domain, DomainContext, Registry

# -- two small domains, registered the way a real one is ------------------------------------


class WinSsh(Section):
    host: str = Field(default="localhost", description="VM address")
    port: Port = Field(default=22555, description="VM sshd port")


class WinArtifacts(Section):
    out_dir: Path | None = Field(default=None, description="Artifact root (the core's)")
    retention_days: float | None = Field(default=None, ge=0, description="Sweep age")


class WinSettings(Section):
    ssh: WinSsh = Field(default_factory=WinSsh)
    token: SecretStr | None = Field(default=None, description="API token")
    artifacts: WinArtifacts = Field(default_factory=WinArtifacts)


class SvcRestic(Section):
    repository: str = Field(default="/srv/restic", description="restic repository")


class SvcSettings(Section):
    restic: SvcRestic = Field(default_factory=SvcRestic)


WIN_SPEC = SettingsSpec(WinSettings, "WIN_AUTOMATION", "WIN_AUTOMATION_CONFIG")
SVC_SPEC = SettingsSpec(SvcSettings, "SVC", "SVC_CONFIG")

BUILT: list[str] = []  # names of the sub-apps built in this test, in order


def _win_app() -> typer.Typer:
    BUILT.append("win")
    app = typer.Typer(no_args_is_help=True)

    @app.command("whoami")
    def whoami(ctx: typer.Context) -> None:
        """Print the VM address from this domain's settings."""
        from homeops.core.cli.common import domain_context

        win = domain_context(ctx).settings("windows")
        typer.echo(f"{win.ssh.host}:{win.ssh.port}")

    @app.command("interrupt")
    def interrupt() -> None:
        """Stand in for Ctrl-C arriving mid-command."""
        raise KeyboardInterrupt

    return app


def _win_checks(ctx: DomainContext) -> list[Check]:
    win = ctx.settings("windows")

    async def probe() -> CheckOutcome:
        return CheckOutcome(Status.OK, f"vm {win.ssh.host}:{win.ssh.port}")

    return [Check("windows.vm", probe, group="windows")]


def _svc_checks(ctx: DomainContext) -> list[Check]:
    async def probe() -> CheckOutcome:
        return CheckOutcome(Status.OK, ctx.settings("services").restic.repository)

    return [Check("services.restic", probe, group="services")]


def _svc_app() -> typer.Typer:
    BUILT.append("svc")
    raise AssertionError("the services sub-app must not be built here")


WINDOWS = Domain(
    "windows",
    "Drive the Windows VM.",
    command="win",
    settings=lambda: WIN_SPEC,
    cli=_win_app,
    aliases=("win-automation",),
    checks=_win_checks,
    core_env={
        "artifacts.root": ("WIN_AUTOMATION_ARTIFACT_OUT",),
        "supervisor.failpoint": ("WIN_AUTOMATION_SUPERVISOR_FAILPOINT",),
    },
    core_keys={
        "artifacts.out_dir": "artifacts.root",
        "artifacts.retention_days": "artifacts.retention_days",
    },
)
SERVICES = Domain(
    "services",
    "Compose services and their backups.",
    command="svc",
    settings=lambda: SVC_SPEC,
    cli=_svc_app,
    aliases=("svc",),
    checks=_svc_checks,
)


@pytest.fixture(autouse=True)
def registry(monkeypatch, state_dir):
    real = cli.domain_records

    def records() -> list[Domain]:
        # The real core, with these two in place of the build's own domains.
        return [*(d for d in real() if d.name == "core"), WINDOWS, SERVICES]

    monkeypatch.setattr(cli, "domain_records", records)
    for name in ("WIN_AUTOMATION_CONFIG", "SVC_CONFIG", "HOMEOPS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    BUILT.clear()


def run(capsys, prog, *args):
    code = cli.run_console(prog, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def settings_of(out: str) -> dict[str, object]:
    return {k: v["value"] for k, v in json.loads(out)["settings"].items()}


# -- item 1: one file for the homelab, one per seed tool -------------------------------------


def test_umbrella_file_with_two_domain_sections(capsys, tmp_path):
    f = write(
        tmp_path / "homelab.json",
        {
            "jobs": {"slots": 3},
            "windows": {"ssh": {"host": "10.0.0.9", "port": 2222}},
            "services": {"restic": {"repository": "sftp:nas:/r"}},
        },
    )
    code, out, err = run(capsys, "homeops", "config", "show", "--json", "--config", str(f))
    assert (code, err) == (0, "")
    values = settings_of(out)
    assert values["jobs.slots"] == 3
    assert values["windows.ssh.host"] == "10.0.0.9"
    assert values["windows.ssh.port"] == 2222
    assert values["services.restic.repository"] == "sftp:nas:/r"
    assert json.loads(out)["domains"] == ["windows", "services"]
    source = json.loads(out)["settings"]["windows.ssh.host"]["source"]
    assert source == f"file:{f}"


def test_doctor_reads_each_domain_section_through_the_context(capsys, tmp_path):
    f = write(tmp_path / "h.json", {"windows": {"ssh": {"host": "vm.lan"}}})
    code, out, _ = run(capsys, "homeops", "doctor", "--json", "--config", str(f))
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["windows.vm"]["detail"] == "vm vm.lan:22555"
    assert checks["services.restic"]["detail"] == "/srv/restic"
    assert code in (0, 3)  # core tool checks depend on this machine; ours are ok


def test_a_seed_tools_own_file_holds_its_domain_at_the_top(capsys, tmp_path):
    f = write(tmp_path / "win.json", {"ssh": {"host": "192.0.2.1"}})
    code, out, err = run(capsys, "win-automation", "config", "show", "--json", "--config", str(f))
    assert (code, err) == (0, "")
    assert settings_of(out)["windows.ssh.host"] == "192.0.2.1"
    assert json.loads(out)["files"]["windows"] == str(f)
    # The same file as the umbrella file is refused: "ssh" is no core key.
    code, _, err = run(capsys, "homeops", "config", "show", "--config", str(f))
    assert code == 2
    assert err.startswith(f"config error: {f}: ssh: unknown key")


def test_seed_file_from_its_own_variable(capsys, tmp_path, monkeypatch):
    f = write(tmp_path / "win.json", {"ssh": {"port": 2022}})
    monkeypatch.setenv("WIN_AUTOMATION_CONFIG", str(f))
    code, out, _ = run(capsys, "win-automation", "config", "show", "--json")
    assert code == 0
    assert settings_of(out)["windows.ssh.port"] == 2022
    # The umbrella command finds it too when its file has no windows section.
    code, out, _ = run(capsys, "homeops", "config", "show", "--json")
    assert settings_of(out)["windows.ssh.port"] == 2022


def test_domain_given_twice_is_refused(capsys, tmp_path, monkeypatch):
    own = write(tmp_path / "win.json", {})
    f = write(tmp_path / "h.json", {"windows": {}})
    monkeypatch.setenv("WIN_AUTOMATION_CONFIG", str(own))
    code, _, err = run(capsys, "homeops", "doctor", "--config", str(f))
    assert code == 2
    assert err.startswith(f"config error: {f}: windows: windows settings are given twice")


def test_section_for_an_unregistered_domain(capsys, tmp_path):
    f = write(tmp_path / "h.json", {"fleet": {"hosts": []}})
    code, out, err = run(capsys, "homeops", "jobs", "list", "--config", str(f))
    assert (code, out) == (2, "")
    assert err == (
        f"config error: {f}: fleet: section for domain 'fleet', which is not registered in "
        "this homeops (domains with settings: windows, services)\n"
    )


@pytest.mark.parametrize(
    ("data", "where", "reason"),
    [
        pytest.param({"windos": {}}, "windos", 'unknown key (did you mean "windows"?)', id="typo"),
        pytest.param(
            {"windows": []}, "windows", "expected an object (section), got array", id="list"
        ),
        pytest.param(
            {"windows": {"ssh": {"port": 0}}},
            "windows.ssh.port",
            "Input should be greater than or equal to 1",
            id="value",
        ),
        pytest.param(
            {"windows": {"ssh": {"prot": 1}}},
            "windows.ssh.prot",
            'unknown key (did you mean "port"?)',
            id="nested-typo",
        ),
        pytest.param(
            {"services": {"restic": {"repository": 5}}},
            "services.restic.repository",
            "Input should be a valid string",
            id="type",
        ),
        pytest.param({"jobs": {"slots": 0}}, "jobs.slots", "greater than or equal to 1", id="core"),
    ],
)
def test_each_error_names_the_file_and_the_dotted_field(capsys, tmp_path, data, where, reason):
    f = write(tmp_path / "h.json", data)
    code, _, err = run(capsys, "homeops", "config", "show", "--config", str(f))
    assert code == 2
    assert err.startswith(f"config error: {f}: {where}: ")
    assert reason in err
    assert err.count("\n") == 1


def test_seed_file_errors_name_the_file_and_field(capsys, tmp_path):
    f = write(tmp_path / "win.json", {"ssh": {"port": "x"}})
    code, _, err = run(capsys, "win-automation", "doctor", "--config", str(f))
    assert code == 2
    assert err.startswith(f"config error: {f}: ssh.port: ")


def test_core_settings_under_the_seeds_names(capsys, tmp_path, monkeypatch):
    out_dir = tmp_path / "art"
    monkeypatch.setenv("WIN_AUTOMATION_ARTIFACT_OUT", str(out_dir))
    code, out, err = run(capsys, "win-automation", "config", "show", "--json")
    assert (code, err) == (0, "")
    shown = json.loads(out)["settings"]["artifacts.root"]
    assert shown == {"value": str(out_dir), "source": "env:WIN_AUTOMATION_ARTIFACT_OUT"}
    # Only in the seed tool: a stale seed variable must not move homeops' artifact root.
    code, out, _ = run(capsys, "homeops", "config", "show", "--json")
    assert settings_of(out)["artifacts.root"] == str(
        Path(os.environ["HOMEOPS_STATE_DIR"]) / "artifacts"
    )
    # The core's own name wins over the seed's when both are set.
    monkeypatch.setenv("HOMEOPS_ARTIFACTS_ROOT", str(tmp_path / "core"))
    code, out, _ = run(capsys, "win-automation", "config", "show", "--json")
    assert settings_of(out)["artifacts.root"] == str(tmp_path / "core")


def test_seed_failpoint_name_is_checked_against_the_checks(capsys, monkeypatch):
    monkeypatch.setenv("WIN_AUTOMATION_SUPERVISOR_FAILPOINT", "windows.nope")
    code, _, err = run(capsys, "win-automation", "supervisor", "run", "--once")
    assert code == 2
    assert err.startswith(
        "config error: WIN_AUTOMATION_SUPERVISOR_FAILPOINT: supervisor.failpoint: unknown check"
    )


def test_seed_alias_of_a_core_setting_is_no_stray_variable(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WIN_AUTOMATION_ARTIFACT_OUT", str(tmp_path))
    monkeypatch.setenv("WIN_AUTOMATION_SSH_HOTS", "x")
    code, _, err = run(capsys, "win-automation", "config", "show")
    assert code == 0
    assert "WIN_AUTOMATION_SSH_HOTS matches no setting" in err
    assert "WIN_AUTOMATION_ARTIFACT_OUT matches" not in err


# -- item 2: records, seed tools, presets, lazy sub-apps -------------------------------------


def test_umbrella_help_lists_domains_without_building_them(capsys):
    code, out, _ = run(capsys, "homeops", "--help")
    assert code == 0
    assert "win        Drive the Windows VM." in out
    assert "svc        Compose services and their backups." in out
    assert BUILT == []


def test_umbrella_builds_only_the_invoked_domain(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WIN_AUTOMATION_SSH_HOST", "vm")
    code, out, err = run(capsys, "homeops", "win", "whoami")
    assert (code, out, err) == (0, "vm:22555\n", "")
    assert BUILT == ["win"]


def test_seed_tool_has_its_commands_and_the_cores(capsys):
    code, out, _ = run(capsys, "win-automation", "--help")
    assert code == 0
    assert out.startswith("Usage: win-automation [OPTIONS] COMMAND")
    for name in ("whoami", "version", "doctor", "worker", "supervisor", "jobs", "artifacts"):
        assert f"\n  {name} " in out
    code, out, _ = run(capsys, "win-automation", "version")
    assert out == f"win-automation {cli.__version__}\n"


def test_seed_doctor_is_preset_to_its_domain(capsys):
    code, out, _ = run(capsys, "win-automation", "doctor", "--json")
    groups = {c["group"] for c in json.loads(out)["checks"]}
    assert groups == {"core", "windows"}
    code, _, err = run(capsys, "win-automation", "doctor", "--only", "services")
    assert code == 2
    assert "No such option: --only" in err


def test_seed_worker_takes_the_seeds_concurrency_flag(capsys):
    code, _, err = run(capsys, "win-automation", "worker", "--concurrency", "0")
    assert code == 2
    assert "'--concurrency' / '--slots'" in err
    code, out, _ = run(capsys, "win-automation", "supervisor", "run", "--help")
    assert "--only" not in out


def test_umbrella_only_option_lists_registered_domains(capsys):
    code, _, err = run(capsys, "homeops", "doctor", "--only", "fleet")
    assert code == 2
    assert err == "error: unknown domain 'fleet' for --only (known: core, windows, services)\n"


def test_building_the_app_twice_registers_nothing_twice():
    first = typer.main.get_command(cli.build_app())
    second = typer.main.get_command(cli.build_app())
    jobs_a = first.commands["jobs"]
    jobs_b = second.commands["jobs"]
    assert list(jobs_a.commands) == list(jobs_b.commands)
    assert list(jobs_a.commands).count("worker") == 1


@pytest.mark.parametrize(
    ("argv0", "prog"),
    [
        pytest.param("/usr/bin/homeops", "homeops", id="homeops"),
        pytest.param("/nix/store/x/bin/win-automation", "win-automation", id="seed"),
        pytest.param("/nix/store/x/bin/.svc-wrapped", "svc", id="nix-wrapper"),
        pytest.param("/usr/lib/python3/homeops/cli.py", "homeops", id="module"),
        pytest.param("python3", "homeops", id="interpreter"),
        pytest.param("", "homeops", id="empty"),
    ],
)
def test_program_name(argv0, prog):
    assert cli.program_name(argv0) == prog


def test_unknown_program_name_runs_homeops(capsys):
    code, out, _ = run(capsys, "ho", "--help")
    assert code == 0
    assert out.startswith("Usage: homeops ")


@pytest.mark.parametrize(
    ("second", "message"),
    [
        pytest.param(Domain("windows", "again"), "domain 'windows' already registered", id="name"),
        pytest.param(Domain("other", "x", command="win"), "name 'win' already taken", id="group"),
        pytest.param(
            Domain("other", "x", aliases=("win-automation",)),
            "name 'win-automation' already taken",
            id="alias",
        ),
    ],
)
def test_registry_refuses_clashing_records(second, message):
    with pytest.raises(ValueError, match=message):
        Registry.of([WINDOWS, second])


@pytest.mark.parametrize(
    ("record", "message"),
    [
        pytest.param(Domain("jobs", "x"), "'jobs': that name is a core settings key", id="key"),
        pytest.param(Domain("t", "x", command="doctor"), "'doctor' is a core command", id="cmd"),
        pytest.param(Domain("t", "x", aliases=("homeops",)), "'homeops' is a core", id="alias"),
    ],
)
def test_registry_refuses_names_the_core_uses(record, message):
    with pytest.raises(ValueError, match=message):
        Registry.of([record])


def test_core_keys_are_the_core_settings_fields():
    from homeops.core.registry import CORE_KEYS
    from homeops.core.settings import CoreSettings

    assert set(CoreSettings.model_fields) == CORE_KEYS


def test_core_section_says_where_core_keys_go(capsys, tmp_path):
    f = write(tmp_path / "h.json", {"core": {"jobs": {}}})
    code, _, err = run(capsys, "homeops", "config", "show", "--config", str(f))
    assert code == 2
    assert err.startswith(f"config error: {f}: core: unknown key (the core's settings go at")


@pytest.mark.parametrize("var", ["HOMEOPS_CONFIG", "WIN_AUTOMATION_CONFIG"])
def test_blank_config_variable_is_an_error(capsys, monkeypatch, var):
    monkeypatch.setenv(var, "  ")
    code, _, err = run(capsys, "win-automation", "config", "show")
    assert code == 2
    assert err == f"config error: {var}: empty path (unset the variable to use no file)\n"


# -- item 8: the core registers like any domain ----------------------------------------------


def test_core_registers_its_checks_and_job_types_like_a_domain(state_dir):
    from homeops.core.config import load_settings
    from homeops.core.settings import CORE_SPEC

    registry = cli.build_registry()
    core = registry.records()[0]
    assert core.name == "core"
    assert core.checks is not None and core.job_types is not None
    settings = load_settings(CORE_SPEC, environ={"HOMEOPS_STATE_DIR": str(state_dir)}).settings
    ctx = DomainContext({}, None, settings)
    assert "core.artifacts-sweep" in registry.collect_job_types(ctx, ["core"])
    names = [c.name for c in registry.collect(ctx, ["core"])]
    assert names[:2] == ["state_dir", "job_store"]


def test_ctrl_c_says_interrupted(capsys):
    code, out, err = run(capsys, "win-automation", "interrupt")
    assert (code, out, err) == (130, "", "interrupted\n")


def test_main_picks_the_seed_tool_by_the_name_it_was_started_as(tmp_path, state_dir):
    """The console-script path: main() with no argv reads sys.argv, argv[0] names the tool."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import homeops.cli as cli\n"
        "import tests.core.test_domains as t\n"
        "real = cli.domain_records\n"
        "core = [d for d in real() if d.name == 'core']\n"
        "cli.domain_records = lambda: [*core, t.WINDOWS, t.SERVICES]\n"
        "sys.argv = ['/nix/store/x/bin/.win-automation-wrapped', '--help']\n"
        "cli.main()\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HOMEOPS_STATE_DIR": str(state_dir), "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0
    assert done.stdout.startswith("Usage: win-automation [OPTIONS] COMMAND")
    assert "\n  whoami " in done.stdout  # the domain's own command: the record was found


# -- a seed file's own keys for core settings ------------------------------------------------


def test_seed_file_sets_core_settings_under_its_own_keys(capsys, tmp_path, monkeypatch):
    out_dir = tmp_path / "art"
    f = write(tmp_path / "win.json", {"artifacts": {"out_dir": str(out_dir), "retention_days": 2}})
    code, out, err = run(capsys, "win-automation", "config", "show", "--json", "--config", str(f))
    assert (code, err) == (0, "")
    shown = json.loads(out)["settings"]
    assert shown["artifacts.root"] == {"value": str(out_dir), "source": f"file:{f}"}
    assert shown["artifacts.retention_days"]["value"] == 2
    assert shown["windows.artifacts.out_dir"]["value"] == str(out_dir)
    # The environment still wins over the file, the seed's own name included.
    monkeypatch.setenv("WIN_AUTOMATION_ARTIFACT_OUT", str(tmp_path / "env"))
    code, out, _ = run(capsys, "win-automation", "config", "show", "--json", "--config", str(f))
    assert settings_of(out)["artifacts.root"] == str(tmp_path / "env")


def test_seed_file_core_keys_do_not_reach_homeops(capsys, tmp_path, monkeypatch, state_dir):
    f = write(tmp_path / "win.json", {"artifacts": {"out_dir": str(tmp_path / "art")}})
    monkeypatch.setenv("WIN_AUTOMATION_CONFIG", str(f))
    code, out, _ = run(capsys, "homeops", "config", "show", "--json")
    assert code == 0
    assert settings_of(out)["artifacts.root"] == str(state_dir / "artifacts")
    assert settings_of(out)["windows.artifacts.out_dir"] == str(tmp_path / "art")


def test_bad_seed_core_key_is_reported_under_the_seeds_name(capsys, tmp_path):
    f = write(tmp_path / "win.json", {"artifacts": {"retention_days": -1}})
    code, _, err = run(capsys, "win-automation", "doctor", "--config", str(f))
    assert code == 2
    assert err.startswith(f"config error: {f}: artifacts.retention_days: ")
