"""``python -m importer DATASET [-d telemetry] [-c payloads] [--drop] ...``: the original's entry point."""

from importer.cli import import_

if __name__ == "__main__":
    import_(prog_name="python -m importer")
