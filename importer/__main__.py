"""``python -m importer DATASET [-d telemetry] [-c payloads] [--drop] ...``.

The original's entry point, kept so its documentation and scripts still work.
"""

from importer.cli import import_

if __name__ == "__main__":
    import_(prog_name="python -m importer")
