"""The sweep's progress on stderr: a rich progress bar on a terminal (the step being
measured, and the time left), else one line a finished step."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from loadsim.size.plan import Step, SweepPlan


class SweepProgress:
    def __init__(self, plan: SweepPlan, *, live: bool) -> None:
        self.plan = plan
        self._progress: Progress | None = None
        self._task: Any = None
        if live:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                redirect_stdout=False,
                redirect_stderr=False,
                transient=True,
            )
            self._task = self._progress.add_task("loadsim size", total=len(plan.steps))
            self._progress.start()

    def step(self, index: int, step: Step) -> None:
        description = (
            f"pool {step.pool_size} {step.kind} (repeat {step.repeat + 1}/{self.plan.repeats})"
        )
        if self._progress is not None:
            self._progress.update(self._task, completed=index, description=description)

    def result(self, fields: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)
            return
        wait = fields["wait_p99_ms"]
        print(
            f"loadsim: size: pool {fields['pool_size']} {fields['kind']} "
            f"(repeat {fields['repeat'] + 1}): {fields['checkouts_per_s']:g} checkouts/s, "
            f"wait p99 {'-' if wait is None else f'{wait:g}'} ms, "
            f"{'steady' if fields['steady'] else 'not steady'}",
            file=sys.stderr,
        )

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
