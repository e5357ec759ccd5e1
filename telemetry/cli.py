"""The ``telemetry`` command: a click group gathering each package's commands.

Each package keeps its own commands in a module as a list named
``commands``; this module only says which module holds which command name,
and imports that module when the command is used.  So ``telemetry process``
does not pay for importing boto3 and pymongo, and the group never grows logic
of its own.
"""

from __future__ import annotations

import importlib

import click

# command name -> the module whose ``commands`` list holds it
COMMANDS = {
    "serve": "receiver.cli",
    "rawlog": "receiver.cli",
    "replay": "receiver.cli",
    "process": "converter.cli",
    "histogram-server": "converter.cli",
    "export": "converter.export",
    "import": "importer.cli",
    "mongo": "importer.cli",
    "aggregate": "aggregations.cli",
    "compare": "aggregations.cli",
    "mapreduce": "mapreduce.cli",
    "demo": "telemetry.demo",
    "aggregates": "aggregations.cli",
    "dashboard": "dashboard.cli",
    "simulate": "fleet.cli",
    "pipeline": "pipeline.cli",
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None:
            return None
        for command in importlib.import_module(module).commands:
            if command.name == name:
                return command
        raise LookupError(f"{module} has no command named {name!r}")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="telemetry-platform")
def main() -> None:
    """Receive, convert, import and analyse telemetry submissions."""
