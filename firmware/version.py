"""The firmware's version: `tools/flash.py verify` reads it back from a board.
A module of its own, so reading it costs a board one tiny import and nothing else."""

VERSION = "0.1.0"
