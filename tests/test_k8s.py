"""`loadsim k8s`: the manifests are what Kubernetes takes (its own schemas, offline), they run
the shards as `run --shard` expects (LOADSIM_SHARDS, JOB_COMPLETION_INDEX, one run id), with
the scenario where the image reads it and DATABASE_URL only from a Secret; and the pods'
container, run as processes the way the Job runs it, makes logs that `loadsim merge` takes."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from loadsim.config.k8s import MAX_NAME, WORKDIR, object_name
from loadsim.config.scenario import load_scenarios, parse_scenarios
from tests.conftest import RunLoadsim
from tests.helpers import (
    REPOSITORY,
    assert_user_error,
    by_name,
    clean_environment,
    loadsim_command,
    parse_events,
    write_scenarios,
)

#: Kubernetes versions the manifests are checked against (kubernetes-validate ships their
#: schemas; pinned in pyproject.toml): the oldest whose pods carry the completion-index label
#: README's collection of logs selects by, and the newest it knows.
KUBERNETES_VERSIONS = ("1.28", "1.37")

SCENARIOS = """\
    [presets.small]
    pool_size = 2
    max_overflow = 1

    [scenarios.tiny]
    description = "A short run for a fleet"
    preset = "small"
    clients = 2
    duration = "1s"

    [scenarios.tiny.workload]
    hold = "5ms"
    think = "5ms"

    [scenarios.other]
    clients = 1
    duration = "1s"
"""

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def k8s(loadsim: RunLoadsim, *arguments: str, **options: Any) -> list[dict[str, Any]]:
    """The manifests `loadsim k8s ARGS` prints, which must succeed."""
    result = loadsim("k8s", *arguments, **options)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("---\n")  # documents separated as kubectl takes them
    return list(yaml.safe_load_all(result.stdout))


def job_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [manifest for manifest in manifests if manifest["kind"] == "Job"]
    return job


def config_map_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (config_map,) = [manifest for manifest in manifests if manifest["kind"] == "ConfigMap"]
    return config_map


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {entry["name"]: entry for entry in container["env"]}


@pytest.fixture
def fleet(loadsim: RunLoadsim, tmp_path: Path) -> list[dict[str, Any]]:
    write_scenarios(tmp_path, SCENARIOS)
    return k8s(loadsim, "tiny", "--shards", "3", "--image", "registry.example/loadsim:1")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_manifests_are_valid_kubernetes_objects(
    fleet: list[dict[str, Any]], version: str
) -> None:
    assert [manifest["kind"] for manifest in fleet] == ["ConfigMap", "Job"]  # mount's source first
    for manifest in fleet:
        assert kubernetes_validate.validate(manifest, version, strict=True) == version
    # strict: a field Kubernetes does not know is refused, not ignored (a typo would be)
    misspelt = copy.deepcopy(job_of(fleet))
    misspelt["spec"]["completionsMode"] = misspelt["spec"].pop("completionMode")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, version, strict=True)


def test_the_job_runs_n_shards_of_the_scenario_once(fleet: list[dict[str, Any]]) -> None:
    job = job_of(fleet)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = container_of(job)
    assert container["image"] == "registry.example/loadsim:1"
    assert container["args"][:2] == ["run", "tiny"]
    assert "--quiet" in container["args"]  # kubectl logs mixes stderr in: events alone
    assert "--barrier" in container["args"]  # pods scheduled apart begin together
    env = env_of(container)
    assert env["LOADSIM_SHARDS"] == {"name": "LOADSIM_SHARDS", "value": "3"}
    run_id = env["LOADSIM_RUN_ID"]["value"]
    assert re.fullmatch(r"[0-9a-f]{12}", run_id)  # made once, printed for every pod
    assert job["metadata"]["labels"]["loadsim/run-id"] == run_id
    # the pods are spread across nodes: one a node while there are nodes
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["maxSkew"] == 1
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spread["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    resources = container["resources"]
    assert resources["requests"]["cpu"] == "1"
    assert resources["requests"]["memory"] == "128Mi"  # an instance and 2 clients, rounded up
    assert "cpu" not in resources["limits"]  # throttling would be measured as waits
    assert resources["limits"]["memory"] == "256Mi"
    for name in (job["metadata"]["name"], config_map_of(fleet)["metadata"]["name"]):
        assert DNS_LABEL.fullmatch(name) and len(name) <= 63, name
    assert job["metadata"]["name"] == f"loadsim-tiny-{run_id}"


def test_the_scenario_file_is_mounted_where_loadsim_reads_it(
    fleet: list[dict[str, Any]], tmp_path: Path
) -> None:
    config_map = config_map_of(fleet)
    (key,) = config_map["data"]
    text = config_map["data"][key]
    pod = job_of(fleet)["spec"]["template"]["spec"]
    (mount,) = container_of(job_of(fleet))["volumeMounts"]
    (volume,) = [volume for volume in pod["volumes"] if volume["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert mount["subPath"] == key
    assert mount["mountPath"] == f"{WORKDIR}/scenarios.toml"  # ./scenarios.toml in the image
    # loaded back by loadsim's own loader, the same scenario and the preset it names
    mine = load_scenarios(tmp_path / "scenarios.toml")
    theirs = parse_scenarios(text, Path(mount["mountPath"]))
    assert theirs.get("tiny") == mine.get("tiny")
    assert theirs.presets == mine.presets


def test_the_image_is_what_the_manifests_assume(fleet: list[dict[str, Any]]) -> None:
    """docker/Dockerfile, read where no docker daemon runs: its last stage's WORKDIR is where
    the ConfigMap is mounted, its ENTRYPOINT is loadsim (the Job gives only its arguments),
    and its user is the pods' runAsUser."""
    instructions = _dockerfile(REPOSITORY / "docker" / "Dockerfile")
    last = max(index for index, (word, _) in enumerate(instructions) if word == "FROM")
    final = instructions[last:]

    def last_of(word: str) -> str:
        return [value for name, value in final if name == word][-1]

    job = job_of(fleet)
    container = container_of(job)
    pod = job["spec"]["template"]["spec"]
    assert last_of("WORKDIR") == WORKDIR
    assert str(Path(container["volumeMounts"][0]["mountPath"]).parent) == last_of("WORKDIR")
    assert json.loads(last_of("ENTRYPOINT")) == ["loadsim"]
    assert "command" not in container  # the entrypoint runs, with the Job's args
    scripts = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["loadsim"] == "loadsim.cli:entry"  # what `pip install .` puts on PATH
    user = last_of("USER")
    (useradd,) = [value for name, value in final if name == "RUN" and "useradd" in value]
    words = shlex.split(useradd)
    assert words[-1] == user
    uid = int(words[words.index("--uid") + 1])
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["runAsNonRoot"] is True


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, its text) for each instruction, continuation lines joined."""
    instructions = []
    logical = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") and not logical:
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if logical.strip():
            word, _, rest = logical.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
        logical = ""
    return instructions


def test_the_database_url_comes_from_a_secret_only(loadsim: RunLoadsim, tmp_path: Path) -> None:
    write_scenarios(tmp_path, SCENARIOS)
    url = "postgresql://loader:s3cret-pw@db.internal.example:5432/app"
    result = loadsim(
        "k8s",
        "tiny",
        "--shards",
        "2",
        "--image",
        "loadsim:1",
        "--database-secret",
        "pg-load",
        "--database-secret-key",
        "dsn",
        env={"DATABASE_URL": url, "POOL_SIZE": "4"},
    )
    assert result.returncode == 0, result.stderr
    for secret in ("s3cret-pw", "db.internal.example", "loader"):
        assert secret not in result.stdout
        assert secret not in result.stderr
    job = job_of(list(yaml.safe_load_all(result.stdout)))
    assert f"job {job['metadata']['name']}," in result.stderr  # what to wait for
    env = env_of(container_of(job))
    assert env["DATABASE_URL"] == {
        "name": "DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "pg-load", "key": "dsn"}},
    }
    # what this shell sets for loadsim, the pods get, to resolve the scenario the same way
    assert env["POOL_SIZE"] == {"name": "POOL_SIZE", "value": "4"}
    # the note counts the fleet: 2 shards x (POOL_SIZE 4 + max_overflow 1)
    assert "up to 10 connections" in result.stderr


def test_the_defaults_and_the_options(loadsim: RunLoadsim, tmp_path: Path) -> None:
    write_scenarios(tmp_path, SCENARIOS, name="fleet.toml")
    arguments = ("other", "--file", str(tmp_path / "fleet.toml"), "--shards", "1")
    manifests = k8s(
        loadsim,
        *arguments,
        "--image",
        "loadsim:1",
        "--namespace",
        "load-tests",
        "--run-id",
        "nightly-42",
        "--events",
        "monitor.*,run.*",
    )
    for manifest in manifests:
        assert manifest["metadata"]["namespace"] == "load-tests"
    job = job_of(manifests)
    assert job["metadata"]["name"] == "loadsim-other-nightly-42"
    container = container_of(job)
    assert container["args"] == [
        "run",
        "other",
        "--quiet",
        "--barrier",
        "--events",
        "monitor.*,run.*",
    ]
    env = env_of(container)
    assert env["LOADSIM_RUN_ID"]["value"] == "nightly-42"
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "loadsim-database",
        "key": "url",
    }
    assert "other" in tomllib.loads(config_map_of(manifests)["data"]["scenarios.toml"])["scenarios"]
    # no --run-id: $LOADSIM_RUN_ID, as `run` takes it; else a new one each time
    from_environment = k8s(loadsim, *arguments, "--image", "x", env={"LOADSIM_RUN_ID": "ci-7"})
    assert env_of(container_of(job_of(from_environment)))["LOADSIM_RUN_ID"]["value"] == "ci-7"
    ids = {
        env_of(container_of(job_of(k8s(loadsim, *arguments, "--image", "x"))))["LOADSIM_RUN_ID"][
            "value"
        ]
        for _ in range(2)
    }
    assert len(ids) == 2


@pytest.mark.parametrize(
    ("scenario", "run_id"),
    [
        ("normal", "nightly-42"),
        ("Pre_Ping Off", "RUN.1"),
        ("s" * 80, "r" * 63),
        ("-", "x"),
    ],
)
def test_names_are_dns_labels_that_keep_runs_apart(scenario: str, run_id: str) -> None:
    name = object_name(scenario, run_id)
    assert DNS_LABEL.fullmatch(name) and len(name) <= MAX_NAME, name
    assert name.startswith("loadsim-")
    assert object_name(scenario, run_id + "x") != name
    assert object_name(scenario, run_id) == name  # the same run, the same name


def test_a_scenario_name_that_looks_like_a_flag_stays_an_argument(
    loadsim: RunLoadsim, tmp_path: Path
) -> None:
    write_scenarios(tmp_path, '[scenarios."-x"]\nclients = 1\nduration = "1s"\n')
    container = container_of(job_of(k8s(loadsim, "--shards", "1", "--image", "i", "--", "-x")))
    assert container["args"][-2:] == ["--", "-x"]


@pytest.mark.parametrize(
    ("arguments", "details"),
    [
        (("nosuch", "--shards", "2"), ("no scenario named 'nosuch'", "known scenarios: tiny")),
        (("tiny", "--shards", "0"), ("--shards 0", "at least 1")),
        (("tiny", "--shards", "100001"), ("--shards 100001", "at most 100,000")),
        (("tiny", "--shards", "2", "--namespace", "Load_Tests"), ("--namespace 'Load_Tests'",)),
        (("tiny", "--shards", "2", "--database-secret", "pg/url"), ("--database-secret 'pg/url'",)),
        (("tiny", "--shards", "2", "--database-secret-key", "a b"), ("--database-secret-key",)),
        (("tiny", "--shards", "2", "--run-id", "night run"), ("--run-id 'night run'",)),
        (("tiny", "--shards", "2", "--run-id", "x" * 64), ("at most 63",)),
        (("tiny", "--shards", "2", "--events", "nothing.*"), ("--events: 'nothing.*'",)),
        (("fleet", "--shards", "2"), ("instances = 2", "--shard and --instances")),
        (("big", "--shards", "30000"), ("--shards 30000", "max_connections is at most")),
        (("tiny", "--shards", "2", "--image", " "), ("--image ' '",)),
        (("tiny", "--shards", "two"), ("Invalid value for '--shards'",)),
        (("tiny", "--shards", "2", "--file", "huge.toml"), ("bytes", "at most 100 KiB")),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    loadsim: RunLoadsim, tmp_path: Path, arguments: tuple[str, ...], details: tuple[str, ...]
) -> None:
    write_scenarios(
        tmp_path,
        """\
        [scenarios.tiny]
        clients = 1

        [scenarios.fleet]
        instances = 2

        [scenarios.big]
        pool = { pool_size = 10, max_overflow = 0 }
        """,
    )
    huge = tmp_path / "huge.toml"  # a scenario file too big for kubectl apply's annotation
    huge.write_text("[scenarios.tiny]\nclients = 1\n" + ("#" * 99 + "\n") * 1100, encoding="utf-8")
    image = () if "--image" in arguments else ("--image", "loadsim:1")
    assert_user_error(loadsim("k8s", *arguments, *image), 2, *details)


def test_a_bad_scenario_file_is_refused_as_run_refuses_it(
    loadsim: RunLoadsim, tmp_path: Path
) -> None:
    write_scenarios(tmp_path, "[scenarios.tiny]\nclients = -1\n")
    k8s_error = assert_user_error(loadsim("k8s", "tiny", "--shards", "2", "--image", "i"), 2)
    run_error = assert_user_error(loadsim("run", "tiny"), 2)
    assert k8s_error == run_error


def test_the_pods_logs_merge_into_the_fleet(
    fleet: list[dict[str, Any]], tmp_path: Path, database_url: str
) -> None:
    """Each pod as the Job runs it, as a process: the image's entrypoint with the container's
    args, in a WORKDIR holding the ConfigMap's file where it is mounted, the container's env
    with the Secret's key resolved and JOB_COMPLETION_INDEX set; stdout and stderr as one
    stream, as `kubectl logs` gives it. `loadsim merge` takes those logs."""
    job = job_of(fleet)
    container = container_of(job)
    config_map = config_map_of(fleet)
    (mount,) = container["volumeMounts"]
    environment = {}
    for entry in container["env"]:
        assert "value" in entry or entry["valueFrom"]["secretKeyRef"]["key"] == "url"
        environment[entry["name"]] = entry.get("value", database_url)
    count = job["spec"]["completions"]
    logs = []
    processes = []
    for index in range(count):
        workdir = tmp_path / f"pod{index}"
        workdir.mkdir()
        (workdir / Path(mount["mountPath"]).name).write_text(
            config_map["data"][mount["subPath"]], encoding="utf-8"
        )
        log = (tmp_path / f"shard{index}.log").open("wb")
        logs.append(log)
        processes.append(
            subprocess.Popen(
                loadsim_command(*container["args"]),
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=clean_environment(**environment, JOB_COMPLETION_INDEX=str(index)),
            )
        )
    for process, log in zip(processes, logs, strict=True):
        assert process.wait(timeout=120) == 0, Path(log.name).read_text()
        log.close()
    merged = subprocess.run(
        loadsim_command("merge", *(log.name for log in logs)),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_environment(),
        timeout=120,
        check=False,
    )
    assert merged.returncode == 0, merged.stderr
    events = parse_events(merged.stdout)
    (summary,) = by_name(events, "run.summary")
    assert summary["instances"] == count
    assert summary["start_skew_ms"] < 100  # --barrier: the pods began together
    assert {event["run_id"] for event in events} == {env_of(container)["LOADSIM_RUN_ID"]["value"]}
    assert sorted(event["instance"] for event in by_name(events, "run.end")) == list(range(count))
    assert all(event["scenario"] == "tiny" for event in by_name(events, "run.start"))
