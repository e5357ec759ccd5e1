"""``python -m receiver``: the same as ``telemetry serve``."""

from receiver.cli import serve_command

if __name__ == "__main__":
    serve_command(prog_name="python -m receiver")
