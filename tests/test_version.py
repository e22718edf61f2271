"""`loadsim --version`: one version, the package's own."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from tests.helpers import RunLoadsim


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_is_the_installed_packages(loadsim: RunLoadsim, flag: str) -> None:
    result = loadsim(flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"loadsim {version('loadsim')}\n"
    assert result.stderr == ""
