"""Configuration precedence, and only that: flag > environment (and .env) > a preset named by
`--preset` > scenario > the scenario's own preset > built-in default. The result is one frozen
`RunConfig` per scenario, resolved before anything connects, that records where each value
came from."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dotenv import dotenv_values

from loadsim.config.limits import (
    BYTES_PER_CLIENT,
    BYTES_PER_INSTANCE,
    CONNECTION_HEADROOM,
    MAX_CLIENTS_PER_INSTANCE,
    POSTGRES_MAX_CONNECTIONS,
    available_memory,
    format_bytes,
)
from loadsim.config.scenario import (
    INSTANCES,
    POOL_KEYS,
    SEED,
    WORKLOAD_KEYS,
    Arrivals,
    ClientGroup,
    Faults,
    MonitorSettings,
    PoolConfig,
    Scenario,
    ScenarioFile,
    Stage,
    Workload,
    check_workload,
    format_duration,
    merge_session_settings,
    parse_rate,
)
from loadsim.config.telemetry import METRICS_PORT, parse_otlp_endpoint
from loadsim.config.thresholds import Threshold, parse_threshold
from loadsim.errors import ScenarioError
from loadsim.schema import LEVELS as LOG_LEVELS

#: Environment variable → pool setting it controls.
POOL_ENVIRONMENT = MappingProxyType(
    {
        "POOL_SIZE": "pool_size",
        "MAX_OVERFLOW": "max_overflow",
        "POOL_TIMEOUT": "pool_timeout",
        "POOL_RECYCLE": "pool_recycle",
        "POOL_PRE_PING": "pool_pre_ping",
        "ECHO_POOL": "echo_pool",
    }
)
#: Environment variable → run setting it controls (live metrics: config/telemetry.py).
TELEMETRY_ENVIRONMENT = MappingProxyType(
    {"LOADSIM_METRICS_PORT": "metrics_port", "LOADSIM_OTLP_ENDPOINT": "otlp_endpoint"}
)
ENVIRONMENT_VARIABLES = ("DATABASE_URL", *POOL_ENVIRONMENT, "LOG_LEVEL", *TELEMETRY_ENVIRONMENT)

#: Flags whose option name is not simply the setting's name with dashes.
FLAG_NAMES = MappingProxyType({"pool_pre_ping": "--pre-ping"})
WORKLOAD_FLAGS = MappingProxyType(
    {key: WORKLOAD_KEYS[key] for key in ("clients", "duration", "iterations", "ramp_up")}
)

DEFAULT = "default"
ENVIRONMENT = "environment"
FLAG = "flag"


def new_run_id() -> str:
    """A run id for a run (or a fleet) given none: twelve hex digits."""
    return uuid.uuid4().hex[:12]


def read_environment(
    environ: Mapping[str, str] | None = None, dotenv_path: Path | None = None
) -> dict[str, str]:
    """The variables loadsim reads, from the process environment over a `.env` file.

    `.env` is read from the current directory unless a path is given; a variable already set
    in the environment wins over the file, as python-dotenv does by default.
    """
    environ = os.environ if environ is None else environ
    path = dotenv_path if dotenv_path is not None else Path.cwd() / ".env"
    from_file = dotenv_values(path) if path.is_file() else {}
    merged: dict[str, str] = {}
    for name in ENVIRONMENT_VARIABLES:
        value = environ.get(name, from_file.get(name))
        if value is not None and value.strip() != "":
            merged[name] = value.strip()
    return merged


@dataclass(frozen=True)
class Flags:
    """Values given on the command line; None means "not given"."""

    database_url: str | None = None
    preset: str | None = None
    pool_size: int | None = None
    max_overflow: int | None = None
    pool_timeout: str | None = None
    pool_recycle: str | None = None
    pool_pre_ping: bool | None = None
    clients: int | None = None
    duration: str | None = None
    iterations: int | None = None
    ramp_up: str | None = None
    #: An arrival rate: the scenario's workload becomes (or stays) open, at this rate.
    rate: float | None = None
    seed: int | None = None
    log_level: str | None = None
    #: Added to the scenario's own thresholds.
    thresholds: tuple[str, ...] = ()
    instances: int | None = None
    metrics_port: int | None = None
    otlp_endpoint: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything one scenario's run needs, resolved once."""

    scenario: str
    description: str
    database_url: str | None
    pool: PoolConfig
    workload: Workload
    groups: tuple[ClientGroup, ...]
    faults: Faults
    monitor: MonitorSettings
    thresholds: tuple[Threshold, ...]
    arrivals: Arrivals | None
    #: Application instances: processes, each with its own engine and pool.
    instances: int
    seed: int | None
    log_level: str

    @property
    def groups_with_main(self) -> tuple[ClientGroup, ...]:
        """Every group of closed-loop clients, the scenario's main workload first (an open
        workload's requests are not clients: they come and go)."""
        if self.arrivals is not None:
            return self.groups
        return (self.workload.main_group(), *self.groups)

    @property
    def total_clients(self) -> int:
        return sum(group.clients for group in self.groups_with_main)

    @property
    def most_connections(self) -> int:
        """The most connections one instance of this run may open at once."""
        if self.pool.capacity is not None:
            return self.pool.capacity
        in_flight = self.arrivals.max_in_flight if self.arrivals is not None else 0
        return self.total_clients + in_flight

    #: setting name → where its value came from ("flag", "environment",
    #: "preset NAME (--preset)", "scenario", "preset NAME", "default").
    sources: Mapping[str, str]
    #: Serve Prometheus's /metrics on this port while the run lasts (a fleet: one port per
    #: instance, from this one up).
    metrics_port: int | None = None
    #: Push the same metrics over OTLP/HTTP to this URL.
    otlp_endpoint: str | None = None
    #: The scenario's `[session]` table: server settings for our sessions (name → value).
    session: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def session_settings(self) -> dict[str, str]:
        """Every server setting each session of the pool gets: the faults' idle timeouts and
        the `[session]` table (the one mechanism: asyncpg's server_settings at connect)."""
        return merge_session_settings(self.session, self.faults)


def resolve(
    scenarios: ScenarioFile, scenario: Scenario, environment: Mapping[str, str], flags: Flags
) -> RunConfig:
    sources: dict[str, str] = {}

    # A preset named on the command line is the user's explicit choice: it outranks the
    # scenario's own pool values. The scenario's own preset stays beneath them.
    flag_preset: Mapping[str, Any] = {}
    if flags.preset is not None:
        flag_preset = scenarios.preset(flags.preset, wanted_by="--preset")
    scenario_preset: Mapping[str, Any] = {}
    if scenario.preset is not None:
        scenario_preset = scenarios.preset(scenario.preset, wanted_by=f"scenario {scenario.name!r}")

    pool_values: dict[str, Any] = {}
    environment_pool = _pool_from_environment(environment)
    for spec in fields(PoolConfig):
        key = spec.name
        flag_value = getattr(flags, key, None)
        if flag_value is not None:
            pool_values[key] = _parse_flag(POOL_KEYS[key], flag_value, key)
            sources[key] = FLAG
        elif key in environment_pool:
            pool_values[key], sources[key] = environment_pool[key], ENVIRONMENT
        elif key in flag_preset:
            pool_values[key], sources[key] = flag_preset[key], f"preset {flags.preset} (--preset)"
        elif key in scenario.pool:
            pool_values[key], sources[key] = scenario.pool[key], "scenario"
        elif key in scenario_preset:
            pool_values[key], sources[key] = scenario_preset[key], f"preset {scenario.preset}"
        else:
            sources[key] = DEFAULT
    pool = PoolConfig(**pool_values)

    workload = scenario.workload
    for key, parse in WORKLOAD_FLAGS.items():
        flag_value = getattr(flags, key)
        if flag_value is not None:
            workload = replace(workload, **{key: _parse_flag(parse, flag_value, key)})
            sources[key] = FLAG
        else:
            sources[key] = "scenario" if key in scenario.workload_keys else DEFAULT
    if flags.iterations is not None and flags.duration is None:
        # --iterations alone means "this many, however long it takes".
        workload = replace(workload, duration=None)
        sources["duration"] = FLAG
    arrivals = _arrivals(scenario, workload, flags, sources)
    check_workload(workload, f"scenario {scenario.name!r}", scenario.faults, arrivals)
    for key in ("hold", "think", "query", "in_transaction", "deadline"):
        sources[key] = "scenario" if key in scenario.workload_keys else DEFAULT

    database_url, sources["database_url"] = _pick(
        flags.database_url, environment.get("DATABASE_URL"), None
    )
    log_level, sources["log_level"] = _pick(flags.log_level, environment.get("LOG_LEVEL"), "info")
    log_level = log_level.lower() if log_level else "info"
    if log_level not in LOG_LEVELS:
        raise ScenarioError(
            f"LOG_LEVEL ({sources['log_level']}): expected one of {', '.join(LOG_LEVELS)}, "
            f"got {log_level!r}"
        )
    sources["seed"] = FLAG if flags.seed is not None else DEFAULT
    seed = _parse_flag(SEED, flags.seed, "seed") if flags.seed is not None else None
    if flags.instances is not None:
        instances, sources["instances"] = _parse_flag(INSTANCES, flags.instances, "instances"), FLAG
    elif scenario.instances is not None:
        instances, sources["instances"] = scenario.instances, "scenario"
    else:
        instances, sources["instances"] = 1, DEFAULT
    metrics_port = _telemetry(
        flags.metrics_port, environment, "metrics_port", METRICS_PORT, sources
    )
    otlp_endpoint = _telemetry(
        flags.otlp_endpoint, environment, "otlp_endpoint", parse_otlp_endpoint, sources
    )
    config = RunConfig(
        scenario=scenario.name,
        description=scenario.description,
        database_url=database_url,
        pool=pool,
        workload=workload,
        groups=scenario.groups,
        faults=scenario.faults,
        monitor=scenario.monitor,
        thresholds=scenario.thresholds
        + tuple(_parse_flag(parse_threshold, text, "threshold") for text in flags.thresholds),
        arrivals=arrivals,
        instances=instances,
        seed=seed,
        log_level=log_level,
        metrics_port=metrics_port,
        otlp_endpoint=otlp_endpoint,
        sources=MappingProxyType(sources),
        session=scenario.session,
    )
    check_resources(config)
    return config


def _arrivals(
    scenario: Scenario, workload: Workload, flags: Flags, sources: dict[str, str]
) -> Arrivals | None:
    """An open workload's arrivals after `--rate` and ramp-up. `--rate R` is a constant rate
    of R requests a second from the start: it replaces an open scenario's rate and stages,
    and turns a closed scenario open (its clients' hold and query serve each request; its
    groups stay closed). A ramp-up on an open workload (`--ramp-up`, or the scenario's
    `ramp_up`) takes the rate from 0 to its starting rate over that time, before any stage."""
    arrivals = scenario.arrivals
    if flags.rate is not None:
        rate = _parse_flag(parse_rate, flags.rate, "rate")
        if workload.duration is None:
            raise ScenarioError(
                f"--rate: an open workload runs for a duration, and scenario "
                f"{scenario.name!r} has none here (add --duration)"
            )
        others = "scenario" if arrivals is not None else "default (open by --rate)"
        if arrivals is None:
            arrivals = Arrivals(rate=rate)
        else:
            arrivals = replace(arrivals, rate=rate, stages=())
        sources["arrivals.rate"] = FLAG
    elif arrivals is not None:
        others = sources["arrivals.rate"] = "scenario"
    if arrivals is not None:
        sources["arrivals.distribution"] = sources["arrivals.max_in_flight"] = others
    if workload.duration is not None and workload.ramp_up > workload.duration:
        raise ScenarioError(
            f"{_ramp_up_named(scenario, flags)}: the ramp-up "
            f"({format_duration(workload.ramp_up)}) is longer than the run "
            f"({format_duration(workload.duration)}): what it would start after the end "
            "never starts; shorten it or lengthen --duration"
        )
    if arrivals is not None and workload.ramp_up > 0:
        arrivals = replace(
            arrivals, rate=0.0, stages=(Stage(workload.ramp_up, arrivals.rate), *arrivals.stages)
        )
        # the rate the ramp starts from is the ramp's; the rate it climbs to, the first stage's
        sources["arrivals.stages[0]"] = f"{sources['arrivals.rate']}, ramp_up {sources['ramp_up']}"
        sources["arrivals.rate"] = f"ramp_up {sources['ramp_up']}"
    return arrivals


def _ramp_up_named(scenario: Scenario, flags: Flags) -> str:
    return "--ramp-up" if flags.ramp_up is not None else f"scenario {scenario.name!r}: ramp_up"


#: The share of the memory available that the clients of a run may take: the rest is left to
#: the embedded server, the writer and the machine.
MEMORY_SHARE = 0.8


def check_resources(config: RunConfig) -> None:
    """What no PostgreSQL server, or not this machine, can hold: the connections the pools may
    open, and the memory the clients take while they wait."""
    where = f"scenario {config.scenario!r}"
    instances = config.instances
    per = f" x {instances} instances ({_named(config, 'instances')})" if instances > 1 else ""
    most = POSTGRES_MAX_CONNECTIONS - CONNECTION_HEADROOM
    capacity = config.pool.capacity
    if capacity is not None and instances * capacity > most:
        key = max(("pool_size", "max_overflow"), key=lambda name: getattr(config.pool, name))
        raise ScenarioError(
            f"{where}: {_named(config, key)}: pool_size + max_overflow = {capacity} connections"
            f"{per} is more than any PostgreSQL server takes (max_connections is at most "
            f"{POSTGRES_MAX_CONNECTIONS}, and {CONNECTION_HEADROOM} are kept free)"
        )
    if (
        capacity is None
        and config.database_url is None
        and instances * config.most_connections > most
    ):
        raise ScenarioError(
            f"{where}: {_named(config, *_largest_crowd(config))}: a pool with no limit "
            f"(pool_class null, or max_overflow -1) may open a connection for each of "
            f"{config.most_connections} clients{per}, more than the embedded PostgreSQL can "
            f"take (max_connections is at most {POSTGRES_MAX_CONNECTIONS}); set a pool limit, "
            "or fewer clients"
        )
    memory = available_memory()
    usable = int(memory.available * MEMORY_SHARE)
    overhead = BYTES_PER_INSTANCE * instances if instances > 1 else 0
    waiting = config.total_clients + (
        config.arrivals.max_in_flight if config.arrivals is not None else 0
    )
    needed = overhead + instances * waiting * BYTES_PER_CLIENT
    if needed > usable:
        key, count = _largest_crowd(config)
        fit = max(0, (usable - overhead) // (instances * BYTES_PER_CLIENT) - (waiting - count))
        raise ScenarioError(
            f"{where}: {_named(config, key, count)}: {waiting} waiting clients{per} need "
            f"about {format_bytes(needed)} of memory ({BYTES_PER_CLIENT // 1024} KiB each"
            f"{f', and {format_bytes(BYTES_PER_INSTANCE)} an instance' if overhead else ''}), "
            f"but this machine has {format_bytes(memory.available)} available ({memory.source}), "
            f"of which a run takes at most {MEMORY_SHARE:.0%}: at most {fit} fit"
        )
    if config.total_clients > MAX_CLIENTS_PER_INSTANCE:
        key, count = _largest_crowd(config)
        raise ScenarioError(
            f"{where}: {_named(config, key, count)}: {config.total_clients} clients are more "
            f"than one process drives (at most {MAX_CLIENTS_PER_INSTANCE:,}: past that the "
            "figures measure loadsim's event loop, not the pool, and a stop takes seconds); "
            "run more instances instead (--instances: each its own process and clients)"
        )


def _largest_crowd(config: RunConfig) -> tuple[str, int]:
    """The setting that asks for the most clients, and how many: the main workload's
    clients, the groups' or an open workload's max_in_flight."""
    crowds = [("groups", sum(group.clients for group in config.groups))]
    if config.arrivals is None:
        crowds.append(("clients", config.workload.clients))
    else:
        crowds.append(("max_in_flight", config.arrivals.max_in_flight))
    return max(crowds, key=lambda crowd: crowd[1])


def _named(config: RunConfig, key: str, value: int | None = None) -> str:
    """A setting as the person who set it wrote it: the flag, the variable or the key (and
    its value, when given)."""
    source = config.sources.get(key)
    if key == "groups":
        named = "key 'clients' of its [[groups]]"
    elif key == "max_in_flight":
        named = "key 'max_in_flight' of its [arrivals]"
    elif source == FLAG:
        flag = FLAG_NAMES.get(key, "--" + key.replace("_", "-"))
        return flag if value is None else f"{flag} {value}"
    elif source == ENVIRONMENT:
        variable = next(name for name, item in POOL_ENVIRONMENT.items() if item == key)
        named = f"environment variable {variable}"
    elif source is not None and source.startswith("preset "):
        named = f"key {key!r} of {source}"
    else:
        named = f"key {key!r}" if source != DEFAULT else f"{key} (default)"
    return named if value is None else f"{named} = {value}"


def _parse_flag(parse: Callable[[object], Any], value: object, key: str) -> Any:
    try:
        return parse(value)
    except ValueError as error:
        option = FLAG_NAMES.get(key, "--" + key.replace("_", "-"))
        raise ScenarioError(f"{option}: {error}") from None


def _pick(flag: str | None, environment: str | None, default: str | None) -> tuple[Any, str]:
    if flag is not None:
        return flag, FLAG
    if environment is not None:
        return environment, ENVIRONMENT
    return default, DEFAULT


def _telemetry(
    flag: object,
    environment: Mapping[str, str],
    key: str,
    parse: Callable[[object], Any],
    sources: dict[str, str],
) -> Any:
    """A live-metrics setting: flag > environment > off."""
    variable = next(name for name, item in TELEMETRY_ENVIRONMENT.items() if item == key)
    if flag is not None:
        sources[key] = FLAG
        return _parse_flag(parse, flag, key)
    sources[key] = ENVIRONMENT if variable in environment else DEFAULT
    if variable not in environment:
        return None
    try:
        return parse(environment[variable])
    except ValueError as error:
        raise ScenarioError(f"environment variable {variable}: {error}") from None


def _pool_from_environment(environment: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for variable, key in POOL_ENVIRONMENT.items():
        if variable in environment:
            try:
                values[key] = POOL_KEYS[key](environment[variable])
            except ValueError as error:
                raise ScenarioError(f"environment variable {variable}: {error}") from None
    return values
