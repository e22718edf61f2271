"""Real programs some tests need (a headless browser, a Prometheus server), installed from
Debian's packages the first time a test asks for one, so that the README's test command
passes on a fresh machine with nothing else to install.

Installing needs root and apt-get; elsewhere the test fails with the one command that would
install it (never a skip: a test that needs a real component and quietly does not run proves
nothing).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

APT_TIMEOUT_S = 900  # Chromium is some 100 MB of packages


def debian_program(package: str, *names: str) -> str:
    """The path of one of `names` on PATH, installing Debian's `package` first when none is."""
    found = _which(names)
    if found:
        return found
    # One install at a time, across test processes: apt holds its own lock and fails fast.
    with open(Path(tempfile.gettempdir()) / "loadsim-tests-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _which(names)  # another process may have installed it while we waited
        if found:
            return found
        problem = _apt_install(package)
    found = _which(names)
    if found:
        return found
    pytest.fail(
        f"this test needs {names[0]} (Debian's package {package}) and it could not be "
        f"installed: {problem or 'installed, yet not on PATH'}; "
        f"install it with: apt-get install {package}"
    )


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def _apt_install(package: str) -> str | None:
    """Installs a Debian package; returns what went wrong, or None."""
    if shutil.which("apt-get") is None:
        return "apt-get is not on this machine"
    if os.geteuid() != 0:
        return "installing a package needs root"
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["apt-get", *arguments],
            capture_output=True,
            text=True,
            env=environment,
            timeout=APT_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )

    install = ("install", "-y", "-qq", package)
    if apt(*install).returncode == 0:
        return None
    update = apt("update", "-qq")  # a fresh machine has no package lists yet
    if update.returncode != 0:
        return f"apt-get update failed: {update.stderr.strip()[-300:]}"
    installed = apt(*install)
    if installed.returncode != 0:
        return f"apt-get install {package} failed: {installed.stderr.strip()[-300:]}"
    return None
