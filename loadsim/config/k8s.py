"""`loadsim k8s`: the Kubernetes manifests of a fleet of shards, as plain dicts (no I/O).

A ConfigMap carries the scenario file, mounted where loadsim reads scenarios from (the image's
WORKDIR, docker/Dockerfile); an Indexed Job runs N pods, each `loadsim run SCENARIO` as shard
JOB_COMPLETION_INDEX of LOADSIM_SHARDS=N (run/merge.py's parse_shard), all with one
LOADSIM_RUN_ID, and DATABASE_URL from a Secret, never inline.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadsim.config.limits import (
    BYTES_PER_CLIENT,
    BYTES_PER_INSTANCE,
    CONNECTION_HEADROOM,
    POSTGRES_MAX_CONNECTIONS,
)
from loadsim.config.settings import RunConfig
from loadsim.errors import ScenarioError

#: The image's WORKDIR and its user (docker/Dockerfile; tests/test_k8s.py checks both).
WORKDIR = "/home/loadsim"
RUN_AS_USER = 10001
#: loadsim reads ./scenarios.toml when there is one (config/scenario.py's default_scenario_path).
SCENARIO_FILE = "scenarios.toml"
SCENARIO_MOUNT = f"{WORKDIR}/{SCENARIO_FILE}"

DEFAULT_SECRET = "loadsim-database"
DEFAULT_SECRET_KEY = "url"
#: Kubernetes refuses an Indexed Job of more completions than this.
MAX_SHARDS = 100_000
#: A Job's name: its pods' hostnames are NAME-INDEX, a DNS label of at most 63 characters, so
#: the name leaves room for "-" and up to six digits (as CronJob's 52).
MAX_NAME = 52
#: The scenario file's size in the ConfigMap. `kubectl apply` keeps the whole object, as JSON,
#: in an annotation, and an object's annotations hold at most 256 KiB: a file of 100 KiB fits
#: even when escaping doubles it (every character a quote or a newline).
MAX_SCENARIO_FILE_BYTES = 100 * 1024

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(rf"{_LABEL.pattern}(\.{_LABEL.pattern})*")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
MIB = 1024 * 1024


@dataclass(frozen=True)
class FleetSpec:
    """What `loadsim k8s` was asked for, the scenario already resolved as `run` resolves it."""

    config: RunConfig
    #: The scenario file's text, as the pods will read it.
    scenario_file: str
    shards: int
    image: str
    run_id: str
    secret: str = DEFAULT_SECRET
    secret_key: str = DEFAULT_SECRET_KEY
    namespace: str | None = None
    #: Extra arguments for `loadsim run` (--events ...), after the scenario.
    run_args: tuple[str, ...] = ()
    #: Variables loadsim reads (POOL_SIZE, ...) set where the manifests were made: the pods get
    #: them too, so that they resolve the scenario the same way. Never DATABASE_URL.
    environment: Mapping[str, str] = field(default_factory=dict)


def build_manifests(spec: FleetSpec) -> list[dict[str, Any]]:
    """The ConfigMap and the Indexed Job, in the order `kubectl apply` should create them."""
    check(spec)
    name = object_name(spec.config.scenario, spec.run_id)
    scenarios = f"{name}-scenario"
    labels = {
        "app.kubernetes.io/name": "loadsim",
        "app.kubernetes.io/instance": name,
        "loadsim/run-id": spec.run_id,
    }
    annotations = {"loadsim/scenario": spec.config.scenario, "loadsim/shards": str(spec.shards)}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(scenarios, spec.namespace, labels, annotations),
        "data": {SCENARIO_FILE: spec.scenario_file},
    }
    scenario = spec.config.scenario
    # --quiet: `kubectl logs` gives stdout and stderr as one stream, which must be the
    # events alone for `loadsim merge` (an error line still says why a shard failed);
    # --barrier: pods scheduled seconds apart meet in the database and begin together
    options = ["--quiet", "--barrier", *spec.run_args]
    if scenario.startswith("-"):  # after "--" everything is an argument: options first
        args = ["run", *options, "--", scenario]
    else:
        args = ["run", scenario, *options]
    env: list[dict[str, Any]] = [
        {"name": "LOADSIM_SHARDS", "value": str(spec.shards)},
        {"name": "LOADSIM_RUN_ID", "value": spec.run_id},
        {
            "name": "DATABASE_URL",
            "valueFrom": {"secretKeyRef": {"name": spec.secret, "key": spec.secret_key}},
        },
    ]
    env += [
        {"name": key, "value": value}
        for key, value in sorted(spec.environment.items())
        if key != "DATABASE_URL"
    ]
    memory = memory_request(spec.config)
    container = {
        "name": "loadsim",
        "image": spec.image,
        "args": args,
        "env": env,
        "resources": {
            # one event loop: a core; no CPU limit, whose throttling would be measured as waits
            "requests": {"cpu": "1", "memory": f"{memory // MIB}Mi"},
            "limits": {"memory": f"{2 * memory // MIB}Mi"},
        },
        "volumeMounts": [
            {
                "name": "scenarios",
                "mountPath": SCENARIO_MOUNT,
                "subPath": SCENARIO_FILE,
                "readOnly": True,
            }
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(name, spec.namespace, labels, annotations),
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.shards,
            "parallelism": spec.shards,
            "backoffLimit": 0,  # a failed load test is not silently run again
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS_USER,
                        "runAsGroup": RUN_AS_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    # one shard a node while there are nodes, then evenly; tainted nodes
                    # (a control plane) are not counted, or they would hold every pod back
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "DoNotSchedule",
                            "nodeTaintsPolicy": "Honor",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": name}},
                        }
                    ],
                    "containers": [container],
                    "volumes": [{"name": "scenarios", "configMap": {"name": scenarios}}],
                },
            },
        },
    }
    return [config_map, job]


def render(manifests: Sequence[Mapping[str, Any]]) -> str:
    """YAML documents separated by `---`, as `kubectl apply -f -` takes them."""
    import yaml  # here: the other commands start without it

    class Dumper(yaml.SafeDumper):
        """safe_dump's, with text of several lines (the scenario file) as a block that
        reads as the file does."""

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump_all(
        manifests, Dumper=Dumper, sort_keys=False, explicit_start=True, allow_unicode=True
    )


def check(spec: FleetSpec) -> None:
    """Bad input is a ScenarioError, one line: what Kubernetes would refuse, before it does."""
    if spec.shards < 1:
        raise ScenarioError(f"--shards {spec.shards}: a fleet has at least 1 shard")
    if spec.shards > MAX_SHARDS:
        raise ScenarioError(
            f"--shards {spec.shards}: an Indexed Job has at most {MAX_SHARDS:,} completions"
        )
    if not spec.image or any(character.isspace() for character in spec.image):
        raise ScenarioError(f"--image {spec.image!r}: expected an image such as loadsim:1.0")
    if spec.namespace is not None and not _is(_LABEL, spec.namespace, 63):
        raise ScenarioError(
            f"--namespace {spec.namespace!r}: a namespace is a DNS label: at most 63 lowercase "
            "letters, digits and '-', starting and ending with a letter or digit"
        )
    if not _is(_SUBDOMAIN, spec.secret, 253):
        raise ScenarioError(
            f"--database-secret {spec.secret!r}: a Secret's name is lowercase letters, digits, "
            "'-' and '.', starting and ending with a letter or digit (at most 253)"
        )
    if not _is(_SECRET_KEY, spec.secret_key, 253):
        raise ScenarioError(
            f"--database-secret-key {spec.secret_key!r}: a Secret's key is letters, digits, "
            "'-', '_' and '.' (at most 253)"
        )
    if not _is(_LABEL_VALUE, spec.run_id, 63):
        raise ScenarioError(
            f"--run-id {spec.run_id!r}: the run id labels the Job and its pods: at most 63 "
            "letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    if spec.config.instances > 1:  # what `run` says to a shard of a scenario with instances
        raise ScenarioError(
            f"scenario {spec.config.scenario!r} declares instances = {spec.config.instances}: "
            "--shard and --instances cannot be combined (each shard is one instance)"
        )
    most = fleet_connections(spec.config, spec.shards)
    if most > POSTGRES_MAX_CONNECTIONS - CONNECTION_HEADROOM:
        raise ScenarioError(
            f"--shards {spec.shards}: {spec.shards} x {spec.config.most_connections} "
            f"connections (scenario {spec.config.scenario!r}) is {most:,}, more than any "
            f"PostgreSQL server takes (max_connections is at most {POSTGRES_MAX_CONNECTIONS:,})"
        )
    size = len(spec.scenario_file.encode("utf-8"))
    if size > MAX_SCENARIO_FILE_BYTES:
        raise ScenarioError(
            f"the scenario file is {size:,} bytes, more than kubectl apply takes in a "
            f"ConfigMap (at most {MAX_SCENARIO_FILE_BYTES // 1024} KiB here); put the scenario "
            "in a smaller file (--file)"
        )


def object_name(scenario: str, run_id: str) -> str:
    """`loadsim-SCENARIO-RUNID` as a DNS label of at most MAX_NAME characters; when the
    scenario or run id had to be changed to fit, a hash of them keeps names apart."""
    wanted = f"loadsim-{scenario}-{run_id}"
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", wanted.lower())).strip("-")
    if name == wanted and len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(f"{scenario}\0{run_id}".encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - len(digest) - 1].rstrip('-')}-{digest}"


def memory_request(config: RunConfig) -> int:
    """Bytes one shard needs: an instance and its waiting clients (config/limits.py's
    figures, which check_resources holds a run to), in whole 64 MiB, at least 128 MiB."""
    waiting = config.total_clients + (
        config.arrivals.max_in_flight if config.arrivals is not None else 0
    )
    needed = BYTES_PER_INSTANCE + waiting * BYTES_PER_CLIENT
    return max(128 * MIB, math.ceil(needed / (64 * MIB)) * 64 * MIB)


def fleet_connections(config: RunConfig, shards: int) -> int:
    """The most connections the fleet's pools may open at once."""
    return shards * config.most_connections


def _metadata(
    name: str, namespace: str | None, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata["labels"] = dict(labels)
    metadata["annotations"] = dict(annotations)
    return metadata


def _is(pattern: re.Pattern[str], text: str, longest: int) -> bool:
    return len(text) <= longest and pattern.fullmatch(text) is not None
