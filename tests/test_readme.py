"""README.md is the front door: what it shows must be true of the code."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from loadsim.cli import app
from loadsim.config.scenario import load_scenarios, parse_scenarios
from loadsim.config.settings import ENVIRONMENT_VARIABLES
from tests.helpers import REPOSITORY

README = (REPOSITORY / "README.md").read_text(encoding="utf-8")


def test_the_toml_examples_are_valid_scenarios() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", README, flags=re.DOTALL)
    assert blocks
    loaded = parse_scenarios("\n".join(blocks), Path("README.md"))
    assert loaded.scenarios  # the examples declare at least one scenario, and all of it parses


def test_every_scenario_in_the_tour_is_shipped() -> None:
    tour = README.split("## A tour of the scenarios", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"\*\*`([a-z-]+)`\*\*", tour))
    shipped = set(load_scenarios(REPOSITORY / "scenarios.toml").scenarios)
    assert named == shipped


def test_every_environment_variable_is_documented() -> None:
    example = (REPOSITORY / ".env.example").read_text(encoding="utf-8")
    for variable in ENVIRONMENT_VARIABLES:
        assert f"`{variable}`" in README
        assert variable in example


def test_the_two_commands_are_the_ones_ci_runs() -> None:
    ci = (REPOSITORY / ".ci" / "run").read_text(encoding="utf-8")
    test_command = re.search(r"Run the tests.*?```sh\n(.*?)\n```", README, flags=re.DOTALL)
    assert test_command is not None
    assert test_command.group(1) in ci


def test_the_layout_table_lists_every_module() -> None:
    layout = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(
        re.findall(r"^\| (?:\*\*)?`(loadsim/[a-z0-9_/]+\.py)`", layout, flags=re.MULTILINE)
    )
    modules = {
        str(path.relative_to(REPOSITORY))
        for path in (REPOSITORY / "loadsim").rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }
    assert listed == modules


def test_every_flag_of_run_is_in_the_readme() -> None:
    """The table lists exactly the options the real `run` command has (read from click)."""
    run = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    flags = {
        name
        for param in run.params
        if param.param_type_name == "option"
        for name in (*param.opts, *param.secondary_opts)
    }
    assert {"--clients", "-c", "--no-pre-ping", "--quiet"} <= flags  # (read as it should be)
    table = README.split("### Every flag of `loadsim run`", 1)[1].split("\n\n", 2)[1]
    listed = {
        name
        for row in table.splitlines()[2:]
        for name in re.findall(r"`(-[-a-z]+)`", row.split(" | ")[0])
    }
    assert flags - listed == set(), "README's table leaves out these flags of run"
    assert listed - flags == set(), "README's table lists flags run does not have"
