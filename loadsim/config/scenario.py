"""Scenario files: TOML → validated, frozen `Scenario` objects.

A scenario names a workload (clients, duration, hold and think times) and the pool settings it
overrides; a preset is a named set of pool settings a scenario can start from. Values are
checked here, once, with errors that name the file, the scenario and the key.
"""

from __future__ import annotations

import difflib
import math
import random
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from loadsim.config.limits import (
    INT64_MAX,
    MAX_ARRIVAL_RATE,
    MAX_DURATION_S,
    MAX_LATENCY_S,
    MIN_MONITOR_INTERVAL_S,
    POSTGRES_MAX_CONNECTIONS,
    POSTGRES_MAX_MS,
    SEED_MAX,
    max_instances,
)
from loadsim.config.thresholds import Threshold, parse_threshold
from loadsim.errors import ScenarioError

# --------------------------------------------------------------------------- durations

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class DurationTooLong(ValueError):
    """A well-formed duration past MAX_DURATION_S: its own message says why."""


def parse_duration(value: object) -> float:
    """Seconds from `"250ms"`, `"2s"`, `"1m30s"`, `"1h"`, or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '250ms', '2s' or '1m30s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = "".join(value.split()).lower()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_duration_units(text, value)
    else:
        raise ValueError(f"expected a duration such as '250ms', '2s' or '1m30s', got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration cannot be negative or infinite, got {shown(value)}")
    if seconds > MAX_DURATION_S:
        raise DurationTooLong(
            f"expected a duration of at most 30 days ({MAX_DURATION_S:,} s), longer than any "
            f"soak; got {shown(value)}"
        )
    return seconds


def _parse_duration_units(text: str, original: str) -> float:
    position, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(
            f"expected a duration such as '250ms', '2s', '1m30s' or a number of seconds, "
            f"got {shown(original)}"
        )
    return seconds


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


# ----------------------------------------------------------------------- distributions


@dataclass(frozen=True)
class Distribution:
    """A time in seconds: fixed, `uniform(a, b)` or `exp(mean)`."""

    kind: Literal["fixed", "uniform", "exp"]
    a: float
    b: float = 0.0

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        return rng.expovariate(1.0 / self.a) if self.a > 0 else 0.0

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a

    @property
    def maximum(self) -> float:
        """The largest value it can produce (infinite for exp)."""
        if self.kind == "exp":
            return math.inf if self.a > 0 else 0.0
        return self.b if self.kind == "uniform" else self.a

    def __str__(self) -> str:
        if self.kind == "fixed":
            return format_duration(self.a)
        if self.kind == "uniform":
            return f"uniform({format_duration(self.a)}, {format_duration(self.b)})"
        return f"exp({format_duration(self.a)})"


_DISTRIBUTION = re.compile(r"^\s*(uniform|exp)\s*\((.*)\)\s*$", re.IGNORECASE)
_DISTRIBUTION_HELP = "a duration like '200ms', 'uniform(10ms, 50ms)' or 'exp(50ms)'"


def parse_distribution(value: object) -> Distribution:
    match = _DISTRIBUTION.match(value) if isinstance(value, str) else None
    if match is None:
        try:
            return Distribution("fixed", parse_duration(value))
        except DurationTooLong:
            raise
        except ValueError:
            raise ValueError(f"expected {_DISTRIBUTION_HELP}, got {shown(value)}") from None
    kind = match.group(1).lower()
    arguments = [part for part in match.group(2).split(",")]
    try:
        numbers = [parse_duration(part) for part in arguments]
    except DurationTooLong:
        raise
    except ValueError:
        raise ValueError(f"expected {_DISTRIBUTION_HELP}, got {shown(value)}") from None
    if kind == "exp":
        if len(numbers) != 1:
            raise ValueError(f"exp takes one argument, the mean, got {value!r}")
        return Distribution("exp", numbers[0])
    if len(numbers) != 2:
        raise ValueError(f"uniform takes two arguments, low and high, got {value!r}")
    low, high = numbers
    if low > high:
        raise ValueError(f"uniform(low, high) needs low <= high, got {value!r}")
    return Distribution("uniform", low, high)


# -------------------------------------------------------------------------- pool keys


def shown(value: object, limit: int = 40) -> str:
    """A value as an error repeats it: its repr, cut short when it is long."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4300 digits
        return "a number of thousands of digits"
    if len(text) <= limit:
        return text
    length = len(value) if isinstance(value, str) else len(text)
    return f"{text[: limit - 3]}... ({length} characters)"


def _integer(
    minimum: int,
    what: str,
    maximum: int | Callable[[], int] = INT64_MAX,
    why: str = "the largest 64-bit integer",
) -> Callable[[object], int]:
    """An integer from `minimum` to `maximum` (a number, or a function of this machine), and
    `why` that is the most."""

    def parse(value: object) -> int:
        display = shown(value)
        if isinstance(value, str):
            text = value.strip()
            digits = text.removeprefix("-") if text.startswith("-") else text.removeprefix("+")
            if not (digits.isascii() and digits.isdigit()):
                raise ValueError(f"expected {what}, got {shown(text)}")
            # int() refuses more than 4300 digits: anything past 30 is out of range anyway
            value = int(text) if len(digits) <= 30 else int(text[0].replace("+", "") + "9" * 31)
            display = str(value) if len(digits) <= 30 else shown(text)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected {what}, got {display}")
        if value < minimum:
            raise ValueError(f"expected {what}, got {display}")
        most = maximum() if callable(maximum) else maximum
        if value > most:
            raise ValueError(f"expected at most {most} ({why}), got {display}")
        return value

    return parse


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
    raise ValueError(f"expected true or false, got {value!r}")


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")

    return parse


def _positive_seconds(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration greater than zero, got {value!r}")
    return seconds


def _bounded_seconds(low: float, high: float, reason: str) -> Callable[[object], float]:
    """A duration greater than zero, from `low` to `high` seconds; `reason` says why."""

    def parse(value: object) -> float:
        seconds = _positive_seconds(value)
        if not low <= seconds <= high:
            raise ValueError(
                f"expected from {format_duration(low)} to {format_duration(high)} ({reason}), "
                f"got {shown(value)}"
            )
        return seconds

    return parse


def _recycle_seconds(value: object) -> float:
    """`pool_recycle`: a duration, or -1 / "off" to disable recycling."""
    if isinstance(value, str) and value.strip().lower() in {"off", "never", "-1"}:
        return -1.0
    if isinstance(value, int | float) and not isinstance(value, bool) and value == -1:
        return -1.0
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration greater than zero, or -1 to disable, got {value!r}")
    return seconds


def _echo_pool(value: object) -> bool | str:
    if isinstance(value, str) and value.strip().lower() == "debug":
        return "debug"
    return parse_bool(value)


PoolValue = int | float | bool | str

_MOST_CONNECTIONS = (POSTGRES_MAX_CONNECTIONS, "the most max_connections PostgreSQL accepts")

#: Every pool setting a scenario, preset, environment variable or flag may set, with its parser.
POOL_KEYS: Mapping[str, Callable[[object], Any]] = MappingProxyType(
    {
        "pool_class": _choice("queue", "null"),
        "pool_size": _integer(1, "an integer of at least 1", *_MOST_CONNECTIONS),
        "max_overflow": _integer(
            -1, "an integer of at least 0, or -1 for no limit", *_MOST_CONNECTIONS
        ),
        "pool_timeout": _bounded_seconds(0, MAX_LATENCY_S, "waits are measured up to an hour"),
        "pool_recycle": _recycle_seconds,
        "pool_pre_ping": parse_bool,
        "pool_use_lifo": parse_bool,
        "pool_reset_on_return": _choice("rollback", "commit", "none"),
        "echo_pool": _echo_pool,
    }
)


@dataclass(frozen=True)
class PoolConfig:
    """The pool settings of one run, fully resolved. Defaults are SQLAlchemy's own."""

    pool_class: str = "queue"
    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout: float = 30.0
    pool_recycle: float = -1.0
    pool_pre_ping: bool = False
    pool_use_lifo: bool = False
    pool_reset_on_return: str = "rollback"
    echo_pool: bool | str = False

    @property
    def capacity(self) -> int | None:
        """Most connections this pool can open at once (None: no limit)."""
        if self.pool_class == "null" or self.max_overflow < 0:
            return None
        return self.pool_size + self.max_overflow


# ---------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    """What the clients of one scenario do."""

    clients: int = 10
    duration: float | None = 10.0
    iterations: int | None = None
    ramp_up: float = 0.0
    hold: Distribution = Distribution("fixed", 0.05)
    think: Distribution = Distribution("fixed", 0.0)
    query: str | None = None
    #: Hold the connection inside an open transaction, idle on the server (client-side wait),
    #: instead of running pg_sleep: the server shows the session `idle in transaction`.
    in_transaction: bool = False
    #: A client-side deadline (seconds) on the work done with a connection: `asyncio.timeout`
    #: around it, cancelling the task while it holds the connection. None: no deadline.
    deadline: float | None = None

    def main_group(self) -> ClientGroup:
        return ClientGroup(
            name="main",
            clients=self.clients,
            hold=self.hold,
            think=self.think,
            query=self.query,
            in_transaction=self.in_transaction,
            deadline=self.deadline,
        )


BEHAVIOURS = ("loop", "leak", "cancel")


@dataclass(frozen=True)
class ClientGroup:
    """Clients that share a behaviour. `loop`: think, check out, hold, return, again.
    `leak`: after `start`, check out once and keep the connection for `hold` ("forever":
    until the run ends) before returning it. `cancel`: after `start`, check out once and have
    the task cancelled `hold` later while it holds the connection, never returning it."""

    name: str
    clients: int = 1
    behaviour: str = "loop"
    start: float = 0.0
    hold: Distribution = Distribution("fixed", 0.05)
    think: Distribution = Distribution("fixed", 0.0)
    query: str | None = None
    in_transaction: bool = False
    #: `loop` clients: a client-side deadline on each use of a connection (see Workload).
    deadline: float | None = None


@dataclass(frozen=True)
class Faults:
    """What is done to the server during a run, at times into it, and settings that make the
    server close our sessions itself."""

    restart: tuple[float, ...] = ()
    terminate: tuple[float, ...] = ()
    terminate_which: str = "all"
    idle_session_timeout: float | None = None
    idle_in_transaction_session_timeout: float | None = None

    def session_settings(self) -> dict[str, str]:
        """Server settings for every session the pool opens (milliseconds, as PostgreSQL
        takes them)."""
        settings = {}
        for name in ("idle_session_timeout", "idle_in_transaction_session_timeout"):
            seconds = getattr(self, name)
            if seconds is not None:
                settings[name] = str(max(1, round(seconds * 1000)))
        return settings

    @property
    def last(self) -> float:
        return max((*self.restart, *self.terminate), default=0.0)


@dataclass(frozen=True)
class Stage:
    """Over `duration`, the arrival rate moves linearly to `target` per second."""

    duration: float
    target: float


@dataclass(frozen=True)
class Arrivals:
    """An open workload: requests arrive at a rate whatever the pool does (k6's
    constant- and ramping-arrival-rate). A request that would exceed `max_in_flight` is
    dropped and counted, not delayed."""

    rate: float
    distribution: str = "constant"
    max_in_flight: int = 1000
    stages: tuple[Stage, ...] = ()

    def rate_at(self, elapsed: float) -> float:
        """Requests per second `elapsed` seconds into the run."""
        rate, start = self.rate, 0.0
        for stage in self.stages:
            if elapsed < start + stage.duration:
                return rate + (stage.target - rate) * (elapsed - start) / stage.duration
            rate, start = stage.target, start + stage.duration
        return rate

    def _pieces(self) -> Iterator[tuple[float, float, float, float]]:
        """The rate as straight pieces: (start, end, rate at start, slope); the last one goes
        on for ever at the last stage's target."""
        rate, start = self.rate, 0.0
        for stage in self.stages:
            yield start, start + stage.duration, rate, (stage.target - rate) / stage.duration
            rate, start = stage.target, start + stage.duration
        yield start, math.inf, rate, 0.0

    def expected(self, start: float, end: float) -> float:
        """Requests due from `start` to `end` seconds into the run: the integral of the rate."""
        total = 0.0
        for first, last, rate, slope in self._pieces():
            low, high = max(start, first), min(end, last)
            if high > low:
                at_low = rate + slope * (low - first)
                total += (high - low) * (at_low + slope * (high - low) / 2)
        return total

    def time_after(self, start: float, arrivals: float, horizon: float) -> float:
        """When `arrivals` more requests are due after `start` (seconds into the run): where
        the integral of the rate from `start` reaches `arrivals`; math.inf if not before
        `horizon`. Integrating, rather than taking 1/rate at `start`, keeps a ramp from a low
        rate honest: the first gap does not stretch to the rate of its first instant. Zero
        more arrivals are due at the first moment the rate is above zero (a stage at rate 0
        starts nothing). Exact, piece by piece (the rate is linear in each stage), so neither
        a low rate nor a long run makes it slow."""
        remaining = max(arrivals, 0.0)
        for first, last, rate, slope in self._pieces():
            if last <= start:
                continue
            low = max(start, first)
            if low >= horizon:
                return math.inf
            at_low = rate + slope * (low - first)
            if remaining == 0.0:
                if at_low > 0 or slope > 0:
                    return low
                continue
            high = min(last, horizon)
            if math.isinf(high):
                area = math.inf if at_low > 0 else 0.0
            else:
                area = (high - low) * (at_low + slope * (high - low) / 2)
            if area >= remaining:
                # at_low x + slope x^2 / 2 = remaining, in the form that cannot cancel out
                root = math.sqrt(max(at_low * at_low + 2 * slope * remaining, 0.0))
                moment = min(low + 2 * remaining / (at_low + root), high)
                return moment if moment < horizon else math.inf
            remaining -= area
        return math.inf


@dataclass(frozen=True)
class MonitorSettings:
    """How often `monitor.stats` is written, and when a held connection counts as leaked."""

    interval: float = 1.0
    leak_threshold: float | None = None
    leak_reclaim: float | None = None


WORKLOAD_KEYS: Mapping[str, Callable[[object], Any]] = MappingProxyType(
    {
        "clients": _integer(1, "an integer of at least 1"),
        "duration": _positive_seconds,
        "iterations": _integer(1, "an integer of at least 1"),
        "ramp_up": parse_duration,
    }
)
_WORKLOAD_TABLE_KEYS: Mapping[str, Callable[[object], Any]] = MappingProxyType(
    {
        "hold": parse_distribution,
        "think": parse_distribution,
        "query": lambda v: _query(v),
        "in_transaction": parse_bool,
        "deadline": lambda v: _deadline(v),
    }
)


INSTANCES = _integer(
    1,
    "an integer of at least 1",
    max_instances,
    "instances are processes: 16 per CPU of this machine; more would measure its scheduler",
)
#: `--seed`: what random.Random takes, bounded so that run.start can write it.
SEED = _integer(0, "an integer of at least 0", SEED_MAX, "the largest 64-bit unsigned integer")


def _group_hold(value: object) -> Distribution:
    if isinstance(value, str) and value.strip().lower() == "forever":
        return Distribution("fixed", math.inf)
    return parse_distribution(value)


def _name(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a name, got {value!r}")
    return value.strip()


_GROUP_KEYS: Mapping[str, Callable[[object], Any]] = MappingProxyType(
    {
        "name": _name,
        "clients": _integer(1, "an integer of at least 1"),
        "behaviour": _choice(*BEHAVIOURS),
        "start": parse_duration,
        "hold": _group_hold,
        "think": parse_distribution,
        "query": lambda v: _query(v),
        "in_transaction": parse_bool,
        "deadline": lambda v: _deadline(v),
    }
)


def _deadline(value: object) -> float:
    """A client-side deadline: a duration above zero, measured like a wait (up to an hour)."""
    return _bounded_seconds(0.001, MAX_LATENCY_S, "a deadline is measured like a wait")(value)


def _times(value: object) -> tuple[float, ...]:
    values = value if isinstance(value, list) else [value]
    return tuple(sorted(parse_duration(item) for item in values))


def _server_timeout(value: object) -> float:
    """A server setting in milliseconds: PostgreSQL takes up to INT_MAX of them."""
    seconds = _positive_seconds(value)
    if round(seconds * 1000) > POSTGRES_MAX_MS:
        raise ValueError(
            f"expected at most {POSTGRES_MAX_MS / 1000}s (24.8 days: PostgreSQL takes at most "
            f"{POSTGRES_MAX_MS} ms), got {shown(value)}"
        )
    return seconds


_FAULT_KEYS: Mapping[str, Callable[[object], Any]] = MappingProxyType(
    {
        "restart": _times,
        "terminate": _times,
        "terminate_which": _choice("idle", "all"),
        "idle_session_timeout": _server_timeout,
        "idle_in_transaction_session_timeout": _server_timeout,
    }
)


# --------------------------------------------------------------- session settings

#: A server setting's name: an identifier, or dotted ones (an extension's
#: `pg_stat_statements.track`, a custom `myapp.tenant`). PostgreSQL folds names to lower case.
_SETTING_NAME = re.compile(r"[a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)*")
#: Settings loadsim sets on its sessions itself: `application_name` is how it tells its own
#: sessions apart on the server.
OWN_SESSION_SETTINGS = frozenset({"application_name"})


def _setting_value(value: object) -> str:
    """A server setting's value as PostgreSQL takes it: a string as written ("250ms", "1min"),
    a number, or true/false (on/off). The server alone judges whether it is valid."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {shown(value)}")
        return repr(value)
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("a setting's value cannot contain a NUL character")
        return value.strip()
    raise ValueError(
        f"expected a value as PostgreSQL takes it: a string such as '250ms', a number or "
        f"true/false, got {shown(value)}"
    )


def _parse_session(value: object, where: str) -> dict[str, str]:
    """`[scenarios.X.session]`: server settings (GUCs) for every session the pool opens."""
    body = _table(value, where)
    settings: dict[str, str] = {}
    for key, item in body.items():
        name = key.strip().lower()
        if not _SETTING_NAME.fullmatch(name):
            raise ScenarioError(
                f"{where}: {shown(key)} is not a server setting's name (an identifier such as "
                "statement_timeout, or dotted ones such as pg_stat_statements.track)"
            )
        if name in OWN_SESSION_SETTINGS:
            raise ScenarioError(
                f"{where}: key {key!r} is loadsim's own: it names our sessions on the server "
                "so that they can be told apart from everyone else's"
            )
        if name in settings:
            raise ScenarioError(f"{where}: setting {name!r} is given twice")
        settings[name] = _parse_value(_setting_value, item, where, key)
    return settings


def _check_session_against_faults(session: Mapping[str, str], faults: Faults, where: str) -> None:
    """A setting given in [session] and by [faults] (its idle timeouts) would have two values."""
    for name in faults.session_settings():
        if name in session:
            raise ScenarioError(
                f"{where}: {name} is set in [faults] and in [session]: keep one of them"
            )


def merge_session_settings(session: Mapping[str, str], faults: Faults) -> dict[str, str]:
    """Every server setting of our sessions: the [faults] idle timeouts and the [session]
    table, as one (the two never name the same setting: parsing refuses that)."""
    return {**faults.session_settings(), **session}


def _rate(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a number of requests per second, got {shown(value)}")
    if value < 0:
        raise ValueError(f"expected a rate of at least 0 per second, got {shown(value)}")
    if value > MAX_ARRIVAL_RATE:
        raise ValueError(
            f"expected at most {MAX_ARRIVAL_RATE:,.0f} requests per second (what one process "
            f"can start or count as dropped; use --instances for more), got {shown(value)}"
        )
    return float(value)


#: An arrival rate (`rate`, a stage's `target`, `--rate`): requests per second, bounded.
parse_rate = _rate

#: Stages an open workload may have (the driver looks its rate up in them at every request).
MAX_STAGES = 1000
#: The shortest stage: a step in the rate (shorter ones would make its slope overflow).
MIN_STAGE_S = 0.001


def _stages(value: object) -> tuple[Stage, ...]:
    if not isinstance(value, list):
        raise ValueError(
            f"expected a list such as [{{ duration = '5s', target = 200 }}], got {value!r}"
        )
    stages = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"duration", "target"}:
            raise ValueError(f"each stage needs exactly 'duration' and 'target', got {item!r}")
        duration = parse_duration(item["duration"])
        if duration < MIN_STAGE_S:
            raise ValueError(
                f"a stage lasts at least {format_duration(MIN_STAGE_S)} (a step in the rate "
                f"takes one), got {shown(item['duration'])}"
            )
        stages.append(Stage(duration, _rate(item["target"])))
    if len(stages) > MAX_STAGES:
        raise ValueError(f"expected at most {MAX_STAGES} stages, got {len(stages)}")
    return tuple(stages)


_ARRIVAL_KEYS: Mapping[str, Callable[[object], Any]] = MappingProxyType(
    {
        "rate": _rate,
        "distribution": _choice("constant", "poisson"),
        "max_in_flight": _integer(1, "an integer of at least 1"),
        "stages": _stages,
    }
)
_MONITOR_KEYS: Mapping[str, Callable[[object], Any]] = MappingProxyType(
    {
        "interval": _bounded_seconds(
            MIN_MONITOR_INTERVAL_S,
            MAX_LATENCY_S,
            "each snapshot queries the server: more often, the monitor measures itself",
        ),
        "leak_threshold": _positive_seconds,
        "leak_reclaim": _positive_seconds,
    }
)
_SCENARIO_KEYS = (
    "description",
    "preset",
    "pool",
    "workload",
    "groups",
    "faults",
    "session",
    "monitor",
    "thresholds",
    "arrivals",
    "instances",
    *WORKLOAD_KEYS,
)


def _query(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected an SQL statement as a string, got {value!r}")
    return value


@dataclass(frozen=True)
class Scenario:
    """One declared scenario as written: a workload and the pool settings it overrides."""

    name: str
    description: str = ""
    preset: str | None = None
    pool: Mapping[str, PoolValue] = field(default_factory=lambda: MappingProxyType({}))
    workload: Workload = Workload()
    #: Workload fields the file set explicitly (the rest are defaults), for `loadsim show`.
    workload_keys: frozenset[str] = frozenset()
    groups: tuple[ClientGroup, ...] = ()
    faults: Faults = Faults()
    monitor: MonitorSettings = MonitorSettings()
    thresholds: tuple[Threshold, ...] = ()
    arrivals: Arrivals | None = None
    #: Application instances (processes, each with its own pool); None: not said.
    instances: int | None = None
    #: `[session]`: server settings for every session the pool opens (name → value as
    #: PostgreSQL takes it), besides the idle timeouts of `faults`.
    session: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ScenarioFile:
    path: Path
    presets: Mapping[str, Mapping[str, PoolValue]]
    scenarios: Mapping[str, Scenario]

    def get(self, name: str) -> Scenario:
        try:
            return self.scenarios[name]
        except KeyError:
            known = ", ".join(self.scenarios) or "(none)"
            hint = _did_you_mean(name, self.scenarios)
            raise ScenarioError(
                f"{self.path}: no scenario named {name!r}{hint}; known scenarios: {known}"
            ) from None

    def preset(self, name: str, *, wanted_by: str) -> Mapping[str, PoolValue]:
        try:
            return self.presets[name]
        except KeyError:
            known = ", ".join(self.presets) or "(none)"
            raise ScenarioError(
                f"{self.path}: {wanted_by} names an unknown preset {name!r}"
                f"{_did_you_mean(name, self.presets)}; known presets: {known}"
            ) from None


# ----------------------------------------------------------------------------- loading

PACKAGED_SCENARIOS = "scenarios.toml"


def default_scenario_path() -> Path:
    """`./scenarios.toml` when there is one, else the file shipped inside the package."""
    local = Path.cwd() / PACKAGED_SCENARIOS
    if local.is_file():
        return local
    return Path(str(resources.files("loadsim") / PACKAGED_SCENARIOS))


def load_scenarios(path: Path | None = None) -> ScenarioFile:
    path = path if path is not None else default_scenario_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioError(f"{path}: cannot read scenario file: {error}") from None
    return parse_scenarios(text, path)


def parse_scenarios(text: str, path: Path) -> ScenarioFile:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{path}: malformed TOML: {error}") from None
    except ValueError:  # int() of a number with more digits than Python converts (4300)
        raise ScenarioError(
            f"{path}: a number has thousands of digits; no setting takes one that large"
        ) from None
    _check_keys(document, ("presets", "scenarios"), f"{path}", "at the top level")
    presets_table = _table(document.get("presets", {}), f"{path}: [presets]")
    presets = {
        name: MappingProxyType(
            _parse_pool(_table(body, f"{path}: [presets.{name}]"), f"{path}: [presets.{name}]")
        )
        for name, body in presets_table.items()
    }
    scenarios_table = _table(document.get("scenarios", {}), f"{path}: [scenarios]")
    scenarios = {
        name: _parse_scenario(name, _table(body, f"{path}: [scenarios.{name}]"), path)
        for name, body in scenarios_table.items()
    }
    loaded = ScenarioFile(path, MappingProxyType(presets), MappingProxyType(scenarios))
    for scenario in scenarios.values():
        if scenario.preset is not None:
            loaded.preset(scenario.preset, wanted_by=f"scenario {scenario.name!r}")
    return loaded


def _parse_scenario(name: str, body: Mapping[str, Any], path: Path) -> Scenario:
    where = f"{path}: scenario {name!r}"
    for key in body:
        if key in POOL_KEYS:
            raise ScenarioError(
                f"{where}: key {key!r} is a pool setting: put it under [scenarios.{name}.pool]"
            )
        if key in _WORKLOAD_TABLE_KEYS:
            raise ScenarioError(f"{where}: key {key!r} belongs under [scenarios.{name}.workload]")
    _check_keys(body, _SCENARIO_KEYS, where, "")
    description = body.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError(f"{where}: key 'description': expected a string, got {description!r}")
    preset = body.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ScenarioError(f"{where}: key 'preset': expected a preset's name, got {preset!r}")

    values: dict[str, Any] = {}
    for key, parse in WORKLOAD_KEYS.items():
        if key in body:
            values[key] = _parse_value(parse, body[key], where, key)
    workload_table = _table(body.get("workload", {}), f"{where} [workload]")
    values.update(_parse_table(workload_table, _WORKLOAD_TABLE_KEYS, f"{where} [workload]"))
    if "iterations" in values and "duration" not in values:
        values["duration"] = None  # this many checkouts, however long they take
    workload = Workload(**values)
    groups = _parse_groups(body.get("groups", []), f"{where} [[groups]]")
    faults = Faults(**_parse_table(body.get("faults", {}), _FAULT_KEYS, f"{where} [faults]"))
    session = _parse_session(body.get("session", {}), f"{where} [session]")
    _check_session_against_faults(session, faults, where)
    monitor = MonitorSettings(
        **_parse_table(body.get("monitor", {}), _MONITOR_KEYS, f"{where} [monitor]")
    )
    if (
        monitor.leak_reclaim is not None
        and monitor.leak_threshold is not None
        and monitor.leak_reclaim < monitor.leak_threshold
    ):
        raise ScenarioError(f"{where} [monitor]: leak_reclaim must not be below leak_threshold")
    arrivals = None
    if "arrivals" in body:
        values_of = _parse_table(body["arrivals"], _ARRIVAL_KEYS, f"{where} [arrivals]")
        if "rate" not in values_of:
            raise ScenarioError(f"{where} [arrivals]: key 'rate' (requests per second) is required")
        arrivals = Arrivals(**values_of)
        if workload.duration is None:
            raise ScenarioError(f"{where}: an open workload ([arrivals]) needs a 'duration'")
    check_workload(workload, where, faults, arrivals)
    thresholds = body.get("thresholds", [])
    if not isinstance(thresholds, list):
        raise ScenarioError(
            f"{where}: key 'thresholds': expected a list such as ['timeouts == 0'], "
            f"got {thresholds!r}"
        )

    pool = _parse_pool(_table(body.get("pool", {}), f"{where} [pool]"), f"{where} [pool]")
    return Scenario(
        name=name,
        description=description.strip(),
        preset=preset,
        pool=MappingProxyType(pool),
        workload=workload,
        workload_keys=frozenset(values),
        groups=groups,
        faults=faults,
        monitor=monitor,
        thresholds=tuple(
            _parse_value(parse_threshold, item, where, "thresholds") for item in thresholds
        ),
        arrivals=arrivals,
        instances=(
            _parse_value(INSTANCES, body["instances"], where, "instances")
            if "instances" in body
            else None
        ),
        session=MappingProxyType(session),
    )


def _parse_table(
    value: object, keys: Mapping[str, Callable[[object], Any]], where: str
) -> dict[str, Any]:
    body = _table(value, where)
    _check_keys(body, tuple(keys), where, "")
    return {key: _parse_value(keys[key], item, where, key) for key, item in body.items()}


def _parse_groups(value: object, where: str) -> tuple[ClientGroup, ...]:
    if not isinstance(value, list):
        raise ScenarioError(f"{where}: expected an array of tables ([[...groups]]), got {value!r}")
    groups = []
    for index, body in enumerate(value):
        place = f"{where} #{index + 1}"
        values = _parse_table(body, _GROUP_KEYS, place)
        if "name" not in values:
            raise ScenarioError(f"{place}: key 'name' is required")
        group = ClientGroup(**values)
        if group.behaviour == "loop" and math.isinf(group.hold.a):
            raise ScenarioError(f"{place}: only 'leak' clients can hold a connection forever")
        if group.behaviour != "loop" and group.deadline is not None:
            raise ScenarioError(
                f"{place}: key 'deadline' is for 'loop' clients; a {group.behaviour!r} client "
                "keeps its connection on purpose"
            )
        groups.append(group)
    names = [group.name for group in groups]
    duplicates = sorted({name for name in names if names.count(name) > 1} | ({"main"} & set(names)))
    if duplicates:
        raise ScenarioError(f"{where}: group names must be unique and not 'main': {duplicates}")
    return tuple(groups)


def check_workload(
    workload: Workload,
    where: str,
    faults: Faults | None = None,
    arrivals: Arrivals | None = None,
) -> None:
    """Contradictions between keys, checked again after flags are applied."""
    if workload.duration is None and workload.iterations is None:
        raise ScenarioError(f"{where}: set 'duration' or 'iterations' so that the run ends")
    longest_hold = workload.hold.mean if workload.hold.kind == "exp" else workload.hold.maximum
    if (
        workload.duration is not None
        and workload.iterations is not None
        and longest_hold > workload.duration
    ):
        raise ScenarioError(
            f"{where}: hold ({workload.hold}) can outlast the duration "
            f"({format_duration(workload.duration)}), so {workload.iterations} iterations "
            "can never complete; shorten hold, lengthen duration or drop one of them"
        )
    if faults is not None and workload.duration is not None and faults.last >= workload.duration:
        raise ScenarioError(
            f"{where}: a fault at {format_duration(faults.last)} comes after the end of the run "
            f"({format_duration(workload.duration)})"
        )
    if (
        arrivals is not None
        and workload.duration is not None
        and arrivals.time_after(0.0, 0.0, workload.duration) == math.inf
    ):
        raise ScenarioError(
            f"{where} [arrivals]: the rate is 0 for the whole duration "
            f"({format_duration(workload.duration)}), so no request would ever start; "
            "set 'rate' or a stage's 'target' above 0"
        )


def _parse_pool(body: Mapping[str, Any], where: str) -> dict[str, PoolValue]:
    _check_keys(body, tuple(POOL_KEYS), where, "")
    return {key: _parse_value(POOL_KEYS[key], value, where, key) for key, value in body.items()}


def _parse_value(parse: Callable[[object], Any], value: object, where: str, key: str) -> Any:
    try:
        return parse(value)
    except ValueError as error:
        raise ScenarioError(f"{where}: key {key!r}: {error}") from None


def _table(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: expected a table, got {value!r}")
    return value


def _check_keys(body: Mapping[str, Any], allowed: tuple[str, ...], where: str, place: str) -> None:
    for key in body:
        if key not in allowed:
            place_text = f" {place}" if place else ""
            raise ScenarioError(
                f"{where}: unknown key {key!r}{place_text}{_did_you_mean(key, allowed)}; "
                f"valid keys: {', '.join(allowed)}"
            )


def _did_you_mean(word: str, candidates: object) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)  # type: ignore[call-overload]
    return f" (did you mean {close[0]!r}?)" if close else ""
