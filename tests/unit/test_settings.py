"""Options defined once (conveyor.settings): precedence, bad values, the config file, the README.

The real processes reading them are tested in tests/e2e/test_configuration.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from conveyor import cli, settings, transport
from conveyor.coordinator.config import OPTIONS as COORDINATOR_OPTIONS
from conveyor.coordinator.config import CoordinatorConfig
from conveyor.coordinator.model import ClaimOrder
from conveyor.errors import ConfigurationError
from conveyor.executor.options import OPTIONS as EXECUTOR_OPTIONS
from conveyor.executor.worker import ExecutorConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def parsed(options: settings.Options, *flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    return parser.parse_args(list(flags))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "lease_ttl = 20\nheartbeat_interval = 2\nshards = 7\n")
    args = parsed(COORDINATOR_OPTIONS, "--config", str(config), "--shards", "9", "--db", "sqlite://")
    environ = {"CONVEYOR_LEASE_TTL": "30", "CONVEYOR_SHARDS": "8", "CONVEYOR_WORKFLOWS": "a, b"}
    resolved = COORDINATOR_OPTIONS.resolve(args, environ)
    assert resolved["shards"] == 9 and resolved.sources["shards"] == "--shards"
    assert resolved["lease_ttl"] == 30.0 and resolved.sources["lease_ttl"] == "CONVEYOR_LEASE_TTL"
    assert resolved["heartbeat_interval"] == 2.0 and resolved.sources["heartbeat_interval"].endswith(
        "heartbeat_interval"
    )
    assert resolved["replay_timeout"] == 10.0 and resolved.sources["replay_timeout"] == "default"
    assert resolved["workflows"] == ("a", "b")


def test_the_config_file_comes_from_conveyor_config_unless_given_by_flag(tmp_path: Path) -> None:
    from_env = write(tmp_path / "env.toml", 'db = "sqlite:///env.db"\nworkflows = ["w"]\n')
    from_flag = write(tmp_path / "flag.toml", 'db = "sqlite:///flag.db"\nworkflows = ["w"]\n')
    environ = {"CONVEYOR_CONFIG": str(from_env)}
    assert COORDINATOR_OPTIONS.resolve(parsed(COORDINATOR_OPTIONS), environ)["db"] == "sqlite:///env.db"
    args = parsed(COORDINATOR_OPTIONS, "--config", str(from_flag))
    assert COORDINATOR_OPTIONS.resolve(args, environ)["db"] == "sqlite:///flag.db"


def test_a_repeated_flag_replaces_the_environments_list() -> None:
    args = parsed(COORDINATOR_OPTIONS, "--workflows", "x", "--workflows", "y", "--db", "sqlite://")
    resolved = COORDINATOR_OPTIONS.resolve(args, {"CONVEYOR_WORKFLOWS": "a,b"})
    assert resolved["workflows"] == ("x", "y")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CONVEYOR_LEASE_TTL", "abc", "CONVEYOR_LEASE_TTL='abc' is not a number"),
        ("CONVEYOR_SHARDS", "1.5", "CONVEYOR_SHARDS='1.5' is not an integer"),
        ("CONVEYOR_SHARDS", "0", "CONVEYOR_SHARDS=0 is not between 1 and 10000"),
        ("CONVEYOR_METRICS_PORT", "70000", "CONVEYOR_METRICS_PORT=70000 is not between 0 and 65535"),
        ("CONVEYOR_INSECURE", "maybe", "CONVEYOR_INSECURE='maybe' is not true or false"),
        ("CONVEYOR_CLAIM_ORDER", "lifo", "CONVEYOR_CLAIM_ORDER='lifo' is not one of fifo, task-id"),
        ("CONVEYOR_REPLAY_TIMEOUT", "nan", "CONVEYOR_REPLAY_TIMEOUT=nan is not a number"),
    ],
)
def test_a_bad_environment_value_is_refused_naming_the_variable(
    variable: str, value: str, message: str
) -> None:
    environ = {"CONVEYOR_DB": "sqlite://", "CONVEYOR_WORKFLOWS": "w", variable: value}
    with pytest.raises(ConfigurationError) as refused:
        COORDINATOR_OPTIONS.resolve(parsed(COORDINATOR_OPTIONS), environ)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('lease_ttl = "abc"', "lease_ttl = 'abc' is not a number"),
        ("insecure = 1", "insecure = 1 is not true or false"),
        ("shards = true", "shards = True is not an integer"),
        ("workflows = [1]", "workflows = [1] is not a list of strings"),
        ("shards = 20000", "shards=20000 is not between 1 and 10000"),
        ("lease_tll = 20", "unknown key 'lease_tll' (did you mean lease_ttl?)"),
        ("token = 'sekrit-value'", "unknown key 'token'"),
        ("lease_ttl = ", "is not valid TOML"),
    ],
)
def test_a_bad_config_file_is_refused_naming_the_file_and_key(
    tmp_path: Path, line: str, message: str
) -> None:
    config = write(tmp_path / "c.toml", f'db = "sqlite://"\n{line}\n')
    with pytest.raises(ConfigurationError) as refused:
        COORDINATOR_OPTIONS.resolve(parsed(COORDINATOR_OPTIONS, "--config", str(config)), {})
    assert str(config) in str(refused.value) and message in str(refused.value)
    assert "sekrit" not in str(refused.value)


def test_a_missing_config_file_and_a_missing_required_option_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot read the config file .*nope\.toml"):
        COORDINATOR_OPTIONS.resolve(
            parsed(COORDINATOR_OPTIONS), {"CONVEYOR_CONFIG": str(tmp_path / "nope.toml")}
        )
    with pytest.raises(ConfigurationError, match=r"db is required: give --db, \$CONVEYOR_DB or db in a"):
        COORDINATOR_OPTIONS.resolve(parsed(COORDINATOR_OPTIONS), {})


def test_a_bad_flag_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["coordinator", "--db", "sqlite://", "--workflows", "w", "--lease-ttl", "abc"])
    assert exited.value.code == 2
    assert "argument --lease-ttl: 'abc' is not a number" in capsys.readouterr().err


def test_the_coordinator_command_exits_2_on_a_bad_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONVEYOR_LEASE_TTL", "abc")
    assert cli.main(["coordinator", "--db", "sqlite://", "--workflows", "w"]) == 2
    assert capsys.readouterr().err.strip() == "conveyor coordinator: CONVEYOR_LEASE_TTL='abc' is not a number"


def test_the_executor_command_exits_2_on_an_unknown_config_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "e.toml", "concurency = 3\n")
    monkeypatch.setenv("CONVEYOR_CONFIG", str(config))
    assert cli.main(["executor"]) == 2
    assert "unknown key 'concurency' (did you mean concurrency?)" in capsys.readouterr().err


def test_a_config_files_token_file_yields_to_conveyor_token_but_conveyor_token_file_beats_it(
    tmp_path: Path,
) -> None:
    token_file = write(tmp_path / "token", "from-the-file\n")
    config = write(tmp_path / "e.toml", f'token_file = "{token_file}"\ntls = true\n')

    def security(environ: dict[str, str], *flags: str) -> transport.ChannelSecurity:
        args = parsed(EXECUTOR_OPTIONS, "--config", str(config), *flags)
        return transport.security_from_values(EXECUTOR_OPTIONS.resolve(args, environ))

    assert security({}).token == "from-the-file" and security({}).tls
    assert security({"CONVEYOR_TOKEN": "from-the-env"}).token == "from-the-env"
    other = write(tmp_path / "other", "from-the-env-file\n")
    assert security({"CONVEYOR_TOKEN_FILE": str(other), "CONVEYOR_TOKEN": "x"}).token == "from-the-env-file"
    flag_file = write(tmp_path / "flag", "from-the-flag\n")
    assert security({"CONVEYOR_TOKEN": "x"}, "--token-file", str(flag_file)).token == "from-the-flag"


def test_the_connection_comes_from_the_environment() -> None:
    target, security = transport.connection_from_arguments(
        None, {"CONVEYOR_COORDINATOR": "coord:1234", "CONVEYOR_TOKEN": "t", "CONVEYOR_TLS": "yes"}
    )
    assert (target, security.token, security.tls) == ("coord:1234", "t", True)
    target, security = transport.connection_from_arguments(None, {})
    assert (target, security) == ("127.0.0.1:50051", transport.ChannelSecurity())
    with pytest.raises(ConfigurationError, match="CONVEYOR_TLS='perhaps' is not true or false"):
        transport.connection_from_arguments(None, {"CONVEYOR_TLS": "perhaps"})


def test_the_secret_token_is_never_repeated_in_a_message() -> None:
    token = transport.CONNECTION_OPTIONS["token"]
    assert token.secret and not token.in_file and token.flag_name is None
    refusing = dataclasses.replace(token, choices=("a",))
    with pytest.raises(ConfigurationError) as refused:
        refusing.parse_text("sekrit-value", token.env)
    assert "sekrit" not in str(refused.value) and "CONVEYOR_TOKEN=(hidden)" in str(refused.value)


def test_the_config_dataclasses_take_their_defaults_from_the_options() -> None:
    coordinator = CoordinatorConfig(database_url="sqlite://")
    for option in COORDINATOR_OPTIONS:
        if option.field_name is not None and not option.required:
            assert getattr(coordinator, option.field_name) == option.default, option.name
    assert coordinator.claim_order is ClaimOrder.FIFO
    executor = ExecutorConfig()
    for option in EXECUTOR_OPTIONS:
        if option.field_name is not None and option.default is not None:
            assert getattr(executor, option.field_name) == option.default, option.name
    assert executor.serve_llm is not EXECUTOR_OPTIONS["no_llm"].default


def test_the_option_bounds_hold_for_configs_built_in_code() -> None:
    with pytest.raises(ValueError, match="shards=0 is not between 1 and 10000"):
        CoordinatorConfig(database_url="sqlite://", shards=0)
    with pytest.raises(ValueError, match="concurrency=0 is not between 1 and 100000"):
        ExecutorConfig(concurrency=0)


def test_help_names_each_options_variable_and_the_precedence(capsys: pytest.CaptureFixture[str]) -> None:
    for command, options in (("coordinator", COORDINATOR_OPTIONS), ("executor", EXECUTOR_OPTIONS)):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "A flag beats the environment, the environment beats the file" in text
        for option in options:
            assert f"${option.env}" in text or option.flag_name is None, option.name


def test_the_readme_tables_match_the_options() -> None:
    text = README.read_text()
    block = re.search(r"<!-- options: begin.*?-->\n(.*?)\n<!-- options: end -->", text, re.DOTALL)
    assert block is not None, "README.md lost its <!-- options: begin/end --> markers"
    assert block.group(1).strip() == settings.readme_tables(), (
        "README.md's option tables differ from the option definitions: "
        "replace them with the output of `python -m conveyor.settings`"
    )
