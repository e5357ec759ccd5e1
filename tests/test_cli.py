"""The `telemetry` group: every command of every package is reachable, and only by name."""

import importlib
import subprocess
import sys

from click.testing import CliRunner

from telemetry.cli import COMMANDS, main


def test_every_listed_command_is_reachable():
    for name in COMMANDS:
        command = main.get_command(None, name)
        assert command is not None and command.name == name


def test_no_command_of_a_package_is_left_out():
    for module in set(COMMANDS.values()):
        for command in importlib.import_module(module).commands:
            assert COMMANDS.get(command.name) == module, f"{command.name} of {module} is not in COMMANDS"


def test_help_lists_every_command_and_unknown_ones_are_usage_errors():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert f"  {name} " in result.output
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2 and "No such command" in result.output


def test_a_command_does_not_import_the_other_packages():
    code = ("import sys; from telemetry.cli import main; main.get_command(None, 'process'); "
            "print(sorted(m for m in ('boto3', 'pymongo', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_option_of_every_command_says_what_it_is_for():
    import click

    from telemetry.cli import COMMANDS, main

    missing = []

    def walk(command, name):
        if isinstance(command, click.Group):
            for sub, c in command.commands.items():
                walk(c, f"{name} {sub}")
            return
        missing.extend(f"{name} {'/'.join(p.opts)}" for p in command.params
                       if isinstance(p, click.Option) and not p.help and not p.hidden)

    for name in COMMANDS:
        walk(main.get_command(None, name), name)
    assert missing == []


def test_the_same_thing_has_the_same_flag_name_everywhere():
    from telemetry.cli import main

    def flags(name):
        return {o for p in main.get_command(None, name).params for o in p.opts}

    assert {"--workdir", "--work-dir"} <= flags("demo")  # the original spelling is kept
    assert {"--num-mappers", "--workers"} <= flags("compare")
    assert {"-m", "--num-mappers", "--workers"} <= flags("mapreduce")
