"""``python -m telemetry``: the same as the ``telemetry`` command (used to start stages)."""

from telemetry.cli import main

if __name__ == "__main__":
    main(prog_name="telemetry")
