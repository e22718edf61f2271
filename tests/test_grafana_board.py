"""docker/compose.yaml's Prometheus and Grafana: every query of the provisioned dashboard names
a metric that a real run's /metrics serves (read from a short run, not from a list), and the
files compose mounts are there and agree with each other (the scrape port is the one loadsim
serves on, the dashboard's data source is the provisioned one, and Prometheus's `promtool`
accepts the scrape config)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.components import debian_program
from tests.helpers import REPOSITORY, free_port, scrape_while_running

DOCKER = REPOSITORY / "docker"
BOARD = DOCKER / "grafana" / "dashboards" / "loadsim.json"

#: A metric selector: a name followed by its label matchers.
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: its panels' and its variables'."""
    found = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    for variable in board["templating"]["list"]:
        found.append(variable["query"]["query"])
    return found


def exported_names(text: str) -> set[str]:
    """Every series name a /metrics text can hold: its samples', and for each family its
    declared name (a family with no sample yet, such as errors before the first, still has
    its `# TYPE` line), with a histogram's `_bucket`, `_count` and `_sum`."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_dashboard_query_names_an_exported_metric(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    arguments = ("normal", "--duration", "2s", "--database-url", database_url)
    by_port, _ = scrape_while_running([port], *arguments, cwd=tmp_path)
    assert by_port[port], "no scrape answered during the run"
    exported = exported_names(by_port[port][-1])
    board = json.loads(BOARD.read_text(encoding="utf-8"))
    named: set[str] = set()
    for expression in queries(board):
        # Grafana's label_values(METRIC, LABEL) names its metric bare: made a selector here
        inner = re.sub(r"^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,", r"\1{},", expression)
        selectors = set(_SELECTOR.findall(inner))
        assert selectors, f"no metric in {expression!r}"
        for name in selectors:
            assert name in exported, f"{expression!r} names {name}, which loadsim does not export"
        # every metric it names is written as a selector, so none escaped the check above
        bare = _SELECTOR.sub("", inner)
        assert not re.search(r"\b(db_client|loadsim)_\w+", bare), expression
        named |= selectors
    # the board shows what the issue asks for
    for wanted in (
        "db_client_connection_count",
        "db_client_connection_max",
        "db_client_connection_pending_requests",
        "loadsim_oldest_wait_seconds",
        "db_client_connection_wait_time_seconds_bucket",
        "db_client_connection_use_time_seconds_bucket",
        "db_client_connection_timeouts_total",
        "loadsim_errors_total",
        "loadsim_server_sessions",
    ):
        assert wanted in named, f"the dashboard does not show {wanted}"


def test_compose_wires_prometheus_and_grafana_to_loadsim() -> None:
    compose = _yaml(DOCKER / "compose.yaml")
    services = compose["services"]
    port = services["loadsim"]["environment"]["LOADSIM_METRICS_PORT"]
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            assert (DOCKER / source).exists(), f"{service} mounts {source}, which is missing"
    scrape = _yaml(DOCKER / "prometheus.yml")
    (job,) = scrape["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["loadsim"] and discovery["port"] == int(port)
    sources = _yaml(DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    (source,) = sources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    board = json.loads(BOARD.read_text(encoding="utf-8"))
    used = {panel["datasource"]["uid"] for panel in board["panels"]}
    used |= {variable["datasource"]["uid"] for variable in board["templating"]["list"]}
    assert used == {source["uid"]}
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"/var/lib/grafana/dashboards/{BOARD.name}"
    providers = _yaml(DOCKER / "grafana" / "provisioning" / "dashboards" / "loadsim.yaml")
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_prometheus_accepts_the_scrape_config() -> None:
    promtool = debian_program("prometheus", "promtool")  # Prometheus's own checker
    checked = subprocess.run(
        [promtool, "check", "config", str(DOCKER / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
