"""The `telemetry` command: one click group over every package's commands."""
