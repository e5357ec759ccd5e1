"""The ``telemetry`` command: a click group gathering each package's commands.

Each package keeps its own commands in ``<package>/cli.py`` as a list named
``commands``; this module only assembles them, so the group never grows
logic of its own.
"""

from __future__ import annotations

import importlib

import click

COMMAND_MODULES = (
    "receiver.cli",
    "converter.cli",
    "importer.cli",
    "aggregations.cli",
    "mapreduce.cli",
    "telemetry.demo",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="telemetry-platform")
def main() -> None:
    """Receive, convert, import and analyse telemetry submissions."""


for _name in COMMAND_MODULES:
    for _command in importlib.import_module(_name).commands:
        main.add_command(_command)
