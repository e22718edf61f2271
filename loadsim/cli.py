"""The `loadsim` command. Parses flags, calls the layers below, maps errors to exit codes.

stdout carries the event stream and nothing else; people's output goes to stderr.

A signal before a run has taken over exits quietly with 128 + the signal (loadsim/signals.py):
`main` sees to it, and so does importing this module as the `loadsim` console script does,
before the imports below, which take a while.
"""

from __future__ import annotations

import os
import sys

from loadsim import exiting, signals

if os.path.basename(getattr(sys.modules.get("__main__"), "__file__", None) or "") == "loadsim":
    signals.quit_quietly()  # the console script (`python -m loadsim` did it in __main__)

import contextlib
import dataclasses
import enum
import errno
import io
import json
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from loadsim import __version__
from loadsim.config.k8s import DEFAULT_SECRET, DEFAULT_SECRET_KEY
from loadsim.config.limits import CONNECTION_HEADROOM
from loadsim.config.scenario import ScenarioFile, load_scenarios
from loadsim.config.selection import select_events
from loadsim.config.settings import Flags, RunConfig, new_run_id, read_environment, resolve
from loadsim.config.show import format_show
from loadsim.errors import LoadsimError, OutputError, ScenarioError
from loadsim.schema import ALWAYS_WRITTEN, json_schema
from loadsim.shard_logs import shard_runs

if TYPE_CHECKING:
    from loadsim.run.writer import EventWriter

#: `--force`, wherever a command writes an `--output` file.
ForceOutput = Annotated[
    bool, typer.Option("--force", help="Overwrite the --output file if it exists.")
]

app = typer.Typer(
    name="loadsim",
    help=(
        "Load-test a SQLAlchemy connection pool against a real PostgreSQL and watch what it "
        "does: reuse, queueing, timeouts, recycling.\n\n"
        "Scenarios are declared in TOML (./scenarios.toml, else the one shipped with loadsim). "
        "With no DATABASE_URL, each run starts its own embedded PostgreSQL.\n\n"
        "Example: loadsim run normal | jq -c 'select(.event==\"client.acquired\")'"
    ),
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        print(f"loadsim {__version__}")
        raise typer.Exit()


@app.callback()
def _overview(
    context: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print loadsim's version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    if context.invoked_subcommand is None:
        print(context.get_help())


class EventLoop(enum.StrEnum):
    auto = "auto"
    asyncio = "asyncio"
    uvloop = "uvloop"


class LogFormat(enum.StrEnum):
    json = "json"
    console = "console"


FileOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="Scenario file. Default: ./scenarios.toml if present, else the packaged one.",
        dir_okay=False,
    ),
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="postgresql://user:password@host:port/db. Default: $DATABASE_URL, else an "
        "embedded PostgreSQL started for the run.",
        show_default=False,
    ),
]
PoolSizeOption = Annotated[
    int | None, typer.Option("--pool-size", help="Connections kept in the pool.")
]
MaxOverflowOption = Annotated[
    int | None,
    typer.Option("--max-overflow", help="Connections allowed beyond pool-size (-1: no limit)."),
]
PoolTimeoutOption = Annotated[
    str | None,
    typer.Option("--pool-timeout", help="How long a checkout waits before TimeoutError ('30s')."),
]
PoolRecycleOption = Annotated[
    str | None,
    typer.Option("--pool-recycle", help="Replace connections older than this at checkout; -1 off."),
]
PrePingOption = Annotated[
    bool | None,
    typer.Option(
        "--pre-ping/--no-pre-ping", help="Test each connection at checkout.", show_default=False
    ),
]
PresetOption = Annotated[
    str | None, typer.Option("--preset", help="Start from this preset's pool settings.")
]
ClientsOption = Annotated[
    int | None, typer.Option("--clients", "-c", help="Number of concurrent coroutine clients.")
]
DurationOption = Annotated[
    str | None, typer.Option("--duration", "-d", help="How long to run: '30s', '2m', '1m30s'.")
]
IterationsOption = Annotated[
    int | None,
    typer.Option(
        "--iterations",
        "-n",
        help="Checkouts per client; alone, the run lasts until all clients are done.",
    ),
]
ThresholdOption = Annotated[
    list[str] | None,
    typer.Option(
        "--threshold",
        "-t",
        help="Fail (exit 1) unless this holds at the end, e.g. 'wait_time_p95_ms < 100' or "
        "'timeouts == 0'. Repeatable; adds to the scenario's own thresholds.",
        show_default=False,
    ),
]
RampUpOption = Annotated[
    str | None,
    typer.Option(
        "--ramp-up",
        help="Start the clients evenly over this time ('5s'); on an open workload, raise "
        "the arrival rate from 0 over it.",
        show_default=False,
    ),
]
RateOption = Annotated[
    float | None,
    typer.Option(
        "--rate",
        help="Requests per second, arriving whatever the pool does (an open workload, "
        "constant rate); a closed scenario becomes open.",
        show_default=False,
    ),
]
SeedOption = Annotated[
    int | None, typer.Option("--seed", help="Seed for hold and think times (repeatable runs).")
]
MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        help="Serve Prometheus metrics on http://HOST:PORT/metrics while the run lasts "
        "(default: $LOADSIM_METRICS_PORT; a fleet: one port per instance from this one).",
        show_default=False,
    ),
]
OtlpEndpointOption = Annotated[
    str | None,
    typer.Option(
        "--otlp-endpoint",
        help="Push the same metrics over OTLP/HTTP to this collector URL, e.g. "
        "http://localhost:4318 (default: $LOADSIM_OTLP_ENDPOINT).",
        show_default=False,
    ),
]


def _configs(
    file: Path | None, names: list[str], flags: Flags
) -> tuple[ScenarioFile, list[RunConfig]]:
    scenarios = load_scenarios(file)
    environment = read_environment()
    return scenarios, [
        resolve(scenarios, scenarios.get(name), environment, flags) for name in names
    ]


@app.command()
def run(
    scenario: Annotated[
        list[str] | None,
        typer.Argument(
            help="Scenarios to run, one after another (default: normal).", show_default=False
        ),
    ] = None,
    file: FileOption = None,
    database_url: DatabaseUrlOption = None,
    pool_size: PoolSizeOption = None,
    max_overflow: MaxOverflowOption = None,
    pool_timeout: PoolTimeoutOption = None,
    pool_recycle: PoolRecycleOption = None,
    pre_ping: PrePingOption = None,
    preset: PresetOption = None,
    clients: ClientsOption = None,
    duration: DurationOption = None,
    iterations: IterationsOption = None,
    ramp_up: RampUpOption = None,
    rate: RateOption = None,
    seed: SeedOption = None,
    threshold: ThresholdOption = None,
    metrics_port: MetricsPortOption = None,
    otlp_endpoint: OtlpEndpointOption = None,
    instances: Annotated[
        int | None,
        typer.Option(
            "--instances",
            help="Run N application instances: processes, each with its own pool, events "
            "merged into one stream.",
            show_default=False,
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="I/N: this process is shard I (from 0) of a fleet of N started elsewhere "
            "(default: $JOB_COMPLETION_INDEX of $LOADSIM_SHARDS); merge their logs with "
            "'loadsim merge'.",
            show_default=False,
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id",
            help="The run id in every event; a fleet's shards share one (default: "
            "$LOADSIM_RUN_ID, else a new one).",
            show_default=False,
        ),
    ] = None,
    start_at: Annotated[
        str | None,
        typer.Option(
            "--start-at",
            help="Begin the load at this wall-clock time (ISO 8601, UTC unless it says "
            "otherwise, or epoch seconds): a fleet's shards start together.",
            show_default=False,
        ),
    ] = None,
    barrier: Annotated[
        bool,
        typer.Option(
            "--barrier",
            help="A shard: wait in the database for every shard of the run id, then all "
            "begin at one instant (after --start-at, if given).",
        ),
    ] = False,
    barrier_timeout: Annotated[
        str | None,
        typer.Option(
            "--barrier-timeout",
            help="How long --barrier waits for the other shards before it fails (default 10m).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Also write the JSONL event stream to this file.", dir_okay=False
        ),
    ] = None,
    force: ForceOutput = False,
    log_format: Annotated[
        LogFormat,
        typer.Option("--log-format", help="json: one JSON object a line; console: for people."),
    ] = LogFormat.json,
    events: Annotated[
        str | None,
        typer.Option(
            "--events",
            help="Write only these kinds of event: comma-separated patterns such as "
            "'monitor.*,run.*' (run.start and run.end always), or 'all'. Default: every "
            "event but pool.checkout, pool.checkin, pool.reset and client.waiting, whose "
            "moments client.acquired and client.released already give (README, 'Events'). "
            "Metrics are unaffected.",
            show_default=False,
        ),
    ] = None,
    loop: Annotated[
        EventLoop,
        typer.Option("--loop", help="Event loop: uvloop when installed (auto), or asyncio."),
    ] = EventLoop.auto,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No dashboard, progress, summary, passed thresholds or warnings on stderr.",
        ),
    ] = False,
) -> None:
    """Run scenarios and stream their events as JSON lines on stdout."""
    from loadsim.run.dashboard import (
        Dashboard,  # heavy imports only for the command that needs them
        LiveView,
    )
    from loadsim.run.fleet import Fleet
    from loadsim.run.merge import parse_barrier, parse_shard, parse_start_at
    from loadsim.run.progress import Progress
    from loadsim.run.runner import Runner
    from loadsim.run.summary_table import format_summary

    flags = Flags(
        database_url=database_url,
        preset=preset,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=pool_recycle,
        pool_pre_ping=pre_ping,
        clients=clients,
        duration=duration,
        iterations=iterations,
        ramp_up=ramp_up,
        rate=rate,
        seed=seed,
        thresholds=tuple(threshold or ()),
        instances=instances,
        metrics_port=metrics_port,
        otlp_endpoint=otlp_endpoint,
    )
    _, configs = _configs(file, scenario or ["normal"], flags)
    fleet = any(config.instances > 1 for config in configs)
    sharding = parse_shard(shard, run_id, dict(os.environ))
    if sharding is not None:
        if fleet:
            raise ScenarioError("--shard and --instances cannot be combined")
        # a shard's run.start says how big its fleet is, for merge and for the checks
        configs = [dataclasses.replace(config, instances=sharding[1]) for config in configs]
    starting_at = None if start_at is None else parse_start_at(start_at)
    if starting_at is not None and fleet:
        raise ScenarioError("--start-at is for a single run or a shard, not --instances")
    waiting_at_barrier = parse_barrier(barrier, barrier_timeout, sharding is not None, configs)
    run_id = sharding[2] if sharding is not None else run_id or os.environ.get("LOADSIM_RUN_ID")
    if fleet and log_format is LogFormat.console:
        raise ScenarioError("--log-format console is not available with several instances")
    kinds = select_events(events)
    stdout = None if _stdout_closed() else sys.stdout.buffer
    if stdout is None and output is None:
        raise OutputError(
            "stdout is closed and there is no --output: the event stream has nowhere to go "
            "(redirect stdout, > /dev/null to discard it, or add --output FILE)"
        )
    # A terminal on stdout is a person reading: JSONL is not for them (nor is it drawn
    # between the dashboard's lines). The stream goes to --output, or nowhere.
    withheld = stdout is not None and log_format is LogFormat.json and stdout.isatty()
    if withheld:
        stdout = None
    output_file = _open_output(output, force) if output is not None else None
    streams: list[IO[bytes]] = [] if stdout is None else [stdout]
    if output_file is not None:
        streams.append(output_file.stream)
    if not streams:  # withheld, and no --output: render only what the run itself needs
        streams.append(open(os.devnull, "wb"))  # noqa: SIM115 (for the process's life)
        kinds = ALWAYS_WRITTEN
    if withheld and not quiet:
        print(_withheld_hint(output), file=sys.stderr)
    sink = _event_sink(streams, output_file)

    def warn(message: str) -> None:
        if not quiet:
            print(f"loadsim: warning: {message}", file=sys.stderr)

    view: LiveView | None = None  # the dashboard for a person, progress lines for a log
    if not quiet and not sys.stderr.isatty():
        view = Progress(_say)
    elif not quiet and not fleet:
        view = Dashboard()
    patience: float | None = 0.0  # how long the end waits for a reader who is not reading
    try:
        if fleet:
            outcome = Fleet(
                configs,
                sink,
                log_format="json",
                warn=warn,
                kinds=kinds,
                loop=loop.value,
                view=view,
            ).run()
        else:
            outcome = Runner(
                configs,
                sink,
                log_format=log_format.value,
                colours=sys.stdout.isatty(),
                warn=warn,
                dashboard=view,
                kinds=kinds,
                loop=loop.value,
                run_id=run_id or None,
                instance=None if sharding is None else sharding[0],
                fleet_size=1 if sharding is None else sharding[1],
                start_at=starting_at,
                barrier_timeout=waiting_at_barrier,
            ).run()
        if outcome.interrupted_by is None:
            patience = None  # a run that ended on its own waits for its reader to read
    finally:
        stopped_by, write_failure = _close_event_sink(sink, output_file, stdout, patience)
    if not quiet and outcome.summaries:
        print(format_summary(outcome.summaries), file=sys.stderr)
    verdicts = [
        (summary["scenario"], result)
        for summary in outcome.summaries
        for result in summary.get("thresholds", [])
    ]
    failed = [verdict for verdict in verdicts if not verdict[1]["passed"]]
    for scenario_name, result in verdicts:  # as declared; a failure even with --quiet
        if result["passed"] and quiet:
            continue
        _say_verdict(scenario_name, result)
    for failure in outcome.failures:  # an instance of a fleet that failed
        print(f"loadsim: error: {failure}", file=sys.stderr)
    if write_failure is not None:  # a full disk, an I/O error: exit 2
        raise OutputError(write_failure)
    if sink.interrupted and outcome.interrupted_by is None:  # Ctrl-C while waiting to write
        raise typer.Exit(signals.exit_status(stopped_by[0]) if stopped_by else 130)
    if outcome.interrupted_by is not None:  # 130, 143, 129: README, "Stopping"
        raise typer.Exit(signals.exit_status(outcome.interrupted_by))
    if outcome.failures:
        raise typer.Exit(outcome.failures[0].exit_code)
    if failed:
        raise typer.Exit(1)


@app.command("_instance", hidden=True)
def instance() -> None:
    """One instance of a fleet started by `run --instances` (its orders come on stdin)."""
    from loadsim.run.fleet import run_instance
    from loadsim.run.writer import EventWriter

    sink = EventWriter([sys.stdout.buffer], warn=lambda message: print(message, file=sys.stderr))
    patience: float | None = 0.0
    try:
        outcome = run_instance(
            sys.stdin.buffer, sink, lambda message: print(message, file=sys.stderr)
        )
        if outcome.interrupted_by is None:
            patience = None
    finally:
        with signals.interrupting() as stopped_by:
            sink.close(patience)
    if outcome.interrupted_by is not None:
        raise typer.Exit(signals.exit_status(outcome.interrupted_by))
    if stopped_by:  # told to stop while its parent was not reading
        raise typer.Exit(signals.exit_status(stopped_by[0]))


@app.command("list")
def list_scenarios(file: FileOption = None) -> None:
    """List the scenarios of a file with their descriptions."""
    scenarios = load_scenarios(file)
    width = max((len(name) for name in scenarios.scenarios), default=0)
    for name, scenario in scenarios.scenarios.items():
        first_line = scenario.description.splitlines()[0] if scenario.description else ""
        print(f"{name:<{width}}  {first_line}")


@app.command()
def show(
    scenario: Annotated[str, typer.Argument(help="The scenario to show.")],
    file: FileOption = None,
    database_url: DatabaseUrlOption = None,
    pool_size: PoolSizeOption = None,
    max_overflow: MaxOverflowOption = None,
    pool_timeout: PoolTimeoutOption = None,
    pool_recycle: PoolRecycleOption = None,
    pre_ping: PrePingOption = None,
    preset: PresetOption = None,
    clients: ClientsOption = None,
    duration: DurationOption = None,
    iterations: IterationsOption = None,
    ramp_up: RampUpOption = None,
    rate: RateOption = None,
    seed: SeedOption = None,
    metrics_port: MetricsPortOption = None,
    otlp_endpoint: OtlpEndpointOption = None,
) -> None:
    """Print a scenario's resolved configuration and where each value came from."""
    flags = Flags(
        database_url=database_url,
        preset=preset,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=pool_recycle,
        pool_pre_ping=pre_ping,
        clients=clients,
        duration=duration,
        iterations=iterations,
        ramp_up=ramp_up,
        rate=rate,
        seed=seed,
        metrics_port=metrics_port,
        otlp_endpoint=otlp_endpoint,
    )
    scenarios, (config,) = _configs(file, [scenario], flags)
    print(f"# {scenarios.path}")
    print(format_show(config))


@app.command()
def validate(
    file: Annotated[
        Path | None, typer.Argument(help="Scenario file (default: as for run).", dir_okay=False)
    ] = None,
) -> None:
    """Check a scenario file; exit 0 if it is valid, else 2 with the reason."""
    scenarios = load_scenarios(file)
    environment = read_environment()
    for scenario in scenarios.scenarios.values():
        resolve(scenarios, scenario, environment, Flags())
    print(
        f"{scenarios.path}: ok ({len(scenarios.scenarios)} scenarios, "
        f"{len(scenarios.presets)} presets)"
    )


RunLogsArgument = Annotated[
    list[str],
    typer.Argument(
        help="Run logs written by 'loadsim run --output FILE' ('-' reads standard input).",
        show_default=False,
    ),
]


@app.command()
def merge(
    logs: Annotated[
        list[str],
        typer.Argument(
            help="The shards' logs ('loadsim run --shard I/N --output FILE'; '-' reads "
            "standard input).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the merged stream here, not to stdout.", dir_okay=False
        ),
    ] = None,
    force: ForceOutput = False,
) -> None:
    """One stream from a fleet's shard logs: their events in time order, then the fleet's
    run.summary as 'run --instances N' writes it; exit 1 when a threshold fails on the fleet."""
    from loadsim.run.merge import merge_logs

    # as run's --output: never overwritten without --force, and (every log is read before
    # the first line is written) a log merged into itself is read whole first
    output_file = _open_output(output, force) if output is not None else None
    stdout = sys.stdout.buffer if output_file is None else None
    sink = _event_sink([output_file.stream if output_file else sys.stdout.buffer], output_file)
    try:
        result = merge_logs(logs, sink, _log_note)
    finally:
        _, write_failure = _close_event_sink(sink, output_file, stdout, patience=None)
    if write_failure is not None:
        raise OutputError(write_failure)
    for outcome in result.thresholds:
        _say_verdict(outcome["scenario"], outcome)
    if any(not outcome["passed"] for outcome in result.thresholds):
        raise typer.Exit(1)


@app.command("k8s")
def k8s(
    scenario: Annotated[str, typer.Argument(help="The scenario every shard runs.")],
    shards: Annotated[
        int, typer.Option("--shards", help="N: the pods of the Indexed Job, one shard each.")
    ],
    image: Annotated[
        str,
        typer.Option(
            "--image", help="loadsim's image (docker/Dockerfile), pushed where the nodes pull."
        ),
    ],
    database_secret: Annotated[
        str,
        typer.Option(
            "--database-secret", help="The Secret whose key holds DATABASE_URL for the pods."
        ),
    ] = DEFAULT_SECRET,
    database_secret_key: Annotated[
        str, typer.Option("--database-secret-key", help="That key of the Secret.")
    ] = DEFAULT_SECRET_KEY,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace", "-n", help="Put both objects in this namespace.", show_default=False
        ),
    ] = None,
    file: FileOption = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id",
            help="The fleet's run id (default: $LOADSIM_RUN_ID, else a new one, printed in "
            "the manifests so that every pod shares it).",
            show_default=False,
        ),
    ] = None,
    events: Annotated[
        str | None,
        typer.Option(
            "--events",
            help="The pods write only these kinds of event ('monitor.*,run.*'), as run's "
            "--events: a pod's log is what kubectl logs can give back.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print a Kubernetes ConfigMap (the scenario file) and an Indexed Job (N shards of
    'loadsim run SCENARIO', DATABASE_URL from a Secret) for 'kubectl apply -f -'.

    Example: loadsim k8s normal --shards 3 --image registry.example/loadsim:1 | kubectl apply -f -
    """
    from loadsim.config.k8s import (
        FleetSpec,
        build_manifests,
        fleet_connections,
        object_name,
        render,
    )

    scenarios = load_scenarios(file)
    # as the pods will resolve it: the same variables (they get them), a DATABASE_URL of
    # their own from the Secret (this one, if any, is neither used nor printed)
    environment = {key: value for key, value in read_environment().items() if key != "DATABASE_URL"}
    config = resolve(
        scenarios,
        scenarios.get(scenario),
        {**environment, "DATABASE_URL": "postgresql://secret/database"},
        Flags(),
    )
    if events is not None:
        select_events(events)
    spec = FleetSpec(
        config=config,
        scenario_file=scenarios.path.read_text(encoding="utf-8"),
        shards=shards,
        image=image,
        # made once here for every pod
        run_id=run_id or os.environ.get("LOADSIM_RUN_ID") or new_run_id(),
        secret=database_secret,
        secret_key=database_secret_key,
        namespace=namespace,
        run_args=() if events is None else ("--events", events),
        environment=environment,
    )
    text = render(build_manifests(spec))
    sys.stdout.write(text)
    most = fleet_connections(config, shards)
    print(
        f"loadsim: job {object_name(scenario, spec.run_id)}, {shards} shards of {scenario!r}, "
        f"run id {spec.run_id}: up to {most:,} "
        f"connections at once; the server needs max_connections >= {most + CONNECTION_HEADROOM:,}",
        file=sys.stderr,
    )


@app.command("schema")
def schema_command() -> None:
    """Print the event stream's JSON Schema (draft 2020-12): what one line of 'loadsim run'
    may hold, every event with its fields, their types, units and meanings.

    Example: loadsim schema > events.schema.json
    """
    print(json.dumps(json_schema(), indent=2))


@contextlib.contextmanager
def _shards_merged(logs: list[str]) -> Iterator[list[str]]:
    """The logs for `report` and `compare`: a fleet's shard logs merged first, into the fleet
    (run/merge.py, and the run side it loads, only when there are some)."""
    runs = shard_runs(logs)
    if not runs:
        yield logs
        return
    from loadsim.run.merge import shards_merged

    with shards_merged(logs, runs, _log_note) as sources:
        yield sources


def _log_note(message: str) -> None:
    print(f"loadsim: warning: {message}", file=sys.stderr)


@app.command()
def report(
    logs: RunLogsArgument,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Directory for the PNG charts and index.html (default: LOG-report/).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Charts and a self-contained HTML page (index.html) from recorded runs."""
    from loadsim.report import build_report  # matplotlib is slow to import: only here
    from loadsim.report.build import default_out_dir

    with _shards_merged(logs) as sources:
        result = build_report(sources, out or default_out_dir(logs, "report"), note=_log_note)
    print(
        f"loadsim: wrote {len(result.charts)} charts and the page to {result.out_dir}/",
        file=sys.stderr,
    )
    print(result.index)


@app.command()
def compare(
    logs: RunLogsArgument,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Directory for the comparison charts and index.html (default: "
            "LOG-compare/ for one log, else loadsim-compare/).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Runs (or the scenarios of one run) side by side: a table here, charts in --out."""
    from loadsim.report import build_comparison  # matplotlib is slow to import: only here
    from loadsim.report.build import default_out_dir

    with _shards_merged(logs) as sources:
        result = build_comparison(sources, out or default_out_dir(logs, "compare"), note=_log_note)
    print(result.table)
    print(f"loadsim: charts and the page in {result.index}", file=sys.stderr)


def _withheld_hint(output: Path | None) -> str:
    """The one line said when stdout is a terminal and the JSONL stream is kept off it."""
    if output is not None:
        return (
            f"loadsim: JSONL goes to {output} only; to see it here: a pipe (| jq) "
            "or --log-format console"
        )
    return (
        "loadsim: no JSONL on a terminal; get it with a pipe (| jq), --output FILE "
        "or --log-format console"
    )


@app.command()
def size(
    scenario: Annotated[str, typer.Argument(help="The scenario whose pool to size.")],
    file: FileOption = None,
    database_url: DatabaseUrlOption = None,
    pool_sizes: Annotated[
        str,
        typer.Option("--pool-sizes", help="Sizes to measure: '2,4,8,16', '4..16' or 'auto'."),
    ] = "auto",
    slo: Annotated[
        str, typer.Option("--slo", help="What the pool must meet at the target rate.")
    ] = "wait_time_p99_ms < 25",
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            help="Target arrival rate a second (default: the scenario's arrivals).",
            show_default=False,
        ),
    ] = None,
    instances: Annotated[
        int, typer.Option("--instances", help="Application instances sharing the server.")
    ] = 1,
    step_duration: Annotated[
        str, typer.Option("--step-duration", help="Measured time of one step.")
    ] = "5s",
    warmup: Annotated[
        str, typer.Option("--warmup", help="Time left out at the start of every step.")
    ] = "1s",
    repeats: Annotated[int, typer.Option("--repeats", help="Repeats of every step.")] = 3,
    seed: SeedOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Also write the JSONL to this file.", dir_okay=False),
    ] = None,
    force: ForceOutput = False,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Then draw the --output log's charts and page into this directory.",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    loop: Annotated[
        EventLoop,
        typer.Option("--loop", help="Event loop: uvloop when installed (auto), or asyncio."),
    ] = EventLoop.auto,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress, table or warnings on stderr.")
    ] = False,
) -> None:
    """Measure the pool at several sizes, fit the models (USL, Erlang C) and recommend a
    pool_size and max_overflow. Steps stream as JSON lines on stdout; exit 1 when no size
    meets the SLO."""
    from loadsim.size.command import run_size

    if report_dir is not None and output is None:
        raise ScenarioError("--report draws the --output log: give --output FILE too")
    _, (config,) = _configs(file, [scenario], Flags(database_url=database_url, seed=seed))
    stdout = None if _stdout_closed() else sys.stdout.buffer
    if stdout is None and output is None:
        raise OutputError("stdout is closed and there is no --output: the steps have nowhere to go")
    output_file = _open_output(output, force) if output is not None else None
    streams: list[IO[bytes]] = [] if stdout is None else [stdout]
    if output_file is not None:
        streams.append(output_file.stream)
    sink = _event_sink(streams, output_file)
    code = 130
    try:
        code = run_size(
            config,
            sink,
            pool_sizes=pool_sizes,
            slo=slo,
            rate=rate,
            instances=instances,
            step_duration=step_duration,
            warmup=warmup,
            repeats=repeats,
            quiet=quiet,
            loop=loop.value,
            warn=_say_warning if not quiet else lambda message: None,
        )
    finally:
        _, write_failure = _close_event_sink(
            sink, output_file, stdout, None if code in (0, 1) else 0.0
        )
    if write_failure is not None:
        raise OutputError(write_failure)
    if report_dir is not None and output is not None and code in (0, 1):
        from loadsim.report import build_report

        drawn = build_report([output], report_dir, note=_log_note)
        print(f"loadsim: the sweep's charts and page in {drawn.index}", file=sys.stderr)
    raise typer.Exit(code)


def _say_verdict(scenario: str, result: Mapping[str, Any]) -> None:
    """A threshold's verdict on stderr, as run and merge say it."""
    print(
        f"loadsim: threshold {'passed' if result['passed'] else 'failed'} in {scenario}: "
        f"{result['threshold']} ({result['metric']} = {_number(result['value'])})",
        file=sys.stderr,
    )


def _number(value: float | None) -> str:
    return "no value" if value is None else f"{value:g}"


@dataclass(frozen=True)
class _OutputFile:
    path: Path
    stream: IO[bytes]
    created: bool  # by this run, which removes it again if it writes nothing to it


def _open_output(path: Path, force: bool) -> _OutputFile:
    """Open --output before anything connects; never overwrite without --force. A file
    that exists keeps its content until the run writes its first line (the writer empties
    it then): a run that fails before that leaves it as it was."""
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            created = True
        except FileExistsError:
            if not force:
                raise ScenarioError(
                    f"--output {path}: the file exists; choose another name or add --force "
                    "to overwrite"
                ) from None
            fd = os.open(path, os.O_WRONLY)  # not emptied yet: see above
            created = False
    except OSError as error:
        raise ScenarioError(f"--output {path}: cannot write: {error.strerror}") from None
    return _OutputFile(path, os.fdopen(fd, "wb"), created)


def _remove_if_unwritten(output: _OutputFile) -> bool:
    """A file this run created and wrote nothing to is removed: a retry needs no --force.
    True when it was."""
    if not output.created:
        return False
    with contextlib.suppress(OSError):
        ours, there = os.fstat(output.stream.fileno()), os.stat(output.path)
        if ours.st_size == 0 and (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino):
            os.unlink(output.path)
            return True
    return False


def _event_sink(streams: list[IO[bytes]], output_file: _OutputFile | None) -> EventWriter:
    """The writer of a command's JSONL over stdout and --output (a --force'd file is
    replaced only once the first event is written)."""
    from loadsim.run.writer import EventWriter  # the writer's imports only where one is needed

    return EventWriter(
        streams,
        names=[_stream_name(stream, output_file) for stream in streams],
        replace=[output_file.stream] if output_file and not output_file.created else [],
        warn=_say_warning,  # what a reader missed is said even with --quiet
    )


def _close_event_sink(
    sink: EventWriter,
    output_file: _OutputFile | None,
    stdout: IO[bytes] | None,
    patience: float | None,
) -> tuple[list[str], str | None]:
    """Ends the stream: waits up to `patience` for its reader (None: as long as it takes; a
    signal cuts the wait short), removes an --output file this run created and never wrote,
    quiets a stdout whose reader has gone. Returns the signals that cut the wait short, and
    the one line for a stream that could not be written (a full disk, an I/O error)."""
    with signals.interrupting() as stopped_by:
        sink.close(patience)
    failure = None
    if sink.write_error is not None:
        stream, error = sink.write_error
        regular = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)  # before the file is closed
    removed = output_file is not None and _remove_if_unwritten(output_file)
    if sink.write_error is not None:
        failure = _write_failure(_stream_name(stream, output_file), error, removed, regular)
    if output_file is not None:
        output_file.stream.close()
    if any(stream is stdout for stream, _ in sink.failed):
        _silence_stdout()
    return stopped_by, failure


def _stream_name(stream: IO[bytes], output: _OutputFile | None) -> str:
    return str(output.path) if output is not None and stream is output.stream else "stdout"


def _write_failure(name: str, error: OSError, removed: bool, regular: bool) -> str:
    """One line for a stream that could not be written: which, and the errno; a file is
    cut back to its last whole line (by the writer), or removed if it has none and this
    run created it."""
    code = errno.errorcode.get(error.errno or 0, str(error.errno))
    what = f"cannot write the event stream to {name}: {error.strerror} ({code}); the run stopped"
    if removed:
        return f"{what}, and {name} is removed: nothing could be written to it"
    if regular:
        return f"{what}; {'it' if name == 'stdout' else name} ends with its last whole line"
    return what


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _say_warning(message: str) -> None:
    print(f"loadsim: warning: {message}", file=sys.stderr)


#: The standard streams (0, 1, 2) that were closed when loadsim started.
_CLOSED_AT_START: set[int] = set()


def _standard_streams() -> None:
    """A standard stream closed at start (`>&-`, `2>&-`) is opened on /dev/null, so that no
    file loadsim opens takes its number, and what is written to it goes nowhere (`run`
    refuses a closed stdout unless it has --output). Text that the streams' encoding cannot
    carry (PYTHONIOENCODING=ascii) is escaped, never an error; the event stream is bytes."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            _CLOSED_AT_START.add(fd)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)  # the writer and the server inherit it
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (for the process's life)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def _stdout_closed() -> bool:
    return 1 in _CLOSED_AT_START or sys.stdout is None


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's exit flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _fail(message: str, exit_code: int) -> NoReturn:
    print(f"loadsim: error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def main() -> None:
    """The command. A stop signal exits quietly with 128 + the signal until a run's lifecycle
    takes over (and after it, for what is left to do); the handlers that were there before
    are back when it returns (it is called in process by tests)."""
    saved = signals.quit_quietly()
    _standard_streams()
    try:
        exit_code = app(standalone_mode=False)
    except LoadsimError as error:
        _fail(str(error), error.exit_code)
    except typer.TyperException as error:  # usage errors: bad flags, bad values
        context = getattr(error, "ctx", None)
        command = context.command_path if context is not None else "loadsim"
        _fail(f"{error.format_message()} (see '{command} --help')", error.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except KeyboardInterrupt:  # only outside the main thread, where signals cannot be handled
        sys.exit(130)
    finally:
        signals.restore(saved)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)


def entry() -> None:
    """The `loadsim` command itself (the console script, `python -m loadsim`): `main`, with
    the process ending as soon as it returns, at once when a stopped run stranded the clients
    that were waiting (see loadsim/exiting.py)."""
    exiting.allow_stranding()
    try:
        main()
    except SystemExit as done:
        exiting.exit_process(done.code)
