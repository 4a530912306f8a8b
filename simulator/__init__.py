"""Batteries on this machine: the device simulator, the firmware on the VM, the demo and
the experiment. What they need beyond the hub is pyproject.toml's `sim` extra."""

import importlib.util
import sys


def lacks_sim_extra(command, modules=("pymodbus",)):
    """True, after one error line, when the `sim` extra is not installed (a hub
    installed on its own has none of it)."""
    absent = [name for name in modules if importlib.util.find_spec(name) is None]
    if absent:
        print("gridbid %s: error: %s missing: pip install 'gridbid[sim]'"
              % (command, " and ".join(absent)), file=sys.stderr)  # fmt: skip
    return bool(absent)
