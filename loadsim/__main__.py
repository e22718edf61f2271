"""`python -m loadsim`, and each instance of a fleet (`python -m loadsim _instance`).

A signal that comes before the run can handle it (the imports take half a second) exits
quietly with 128 + the signal: the handlers go in before anything else is imported.
"""

from loadsim.signals import quit_quietly

quit_quietly()

from loadsim.cli import entry  # noqa: E402  (after the handlers, on purpose)

entry()
