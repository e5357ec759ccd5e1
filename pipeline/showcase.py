"""``./scripts/demo --serve``: the live pipeline with simulated traffic flowing through it.

Starts ``telemetry pipeline`` on a data directory under the demo's work
directory (the embedded MongoDB server, the fleet's Histograms.json revisions
as the histogram cache), posts a simulated fleet's pings (:mod:`fleet`, the
demo's scenario) into its receiver at a steady rate,
prints the dashboard's URL, and every few seconds the pipeline's status, so a
newcomer sees the numbers move.  Ctrl-C (or ``seconds`` passing) stops the
traffic and drains the pipeline.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from pipeline.cli import status_lines
from pipeline.errors import PipelineError
from pipeline.health import pipeline_health
from pipeline.service import start_pipeline
from pipeline.traffic import SteadyTraffic, fleet_pings


def _free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _describe(scenario) -> list[str]:
    from fleet.population import Fleet

    return [line for line in Fleet(1, seed=0, scenario=scenario).describe()
            if line.strip().startswith("effect")]


def serve_demo(workdir: Path, rate: float = 20.0, seconds: float | None = None,
               dashboard_port: int = 8000, mongo_url: str | None = None,
               echo: Callable[[str], None] = print, status_every: float = 10.0) -> int:
    """Run until Ctrl-C/SIGTERM or ``seconds``; returns the pipeline's exit code."""
    from fleet.channels import write_revisions
    from telemetry.demo import DEMO_SCENARIO, DEMO_SEED

    data_dir = (workdir / "live").absolute()
    cache = workdir.absolute() / "histograms"
    write_revisions(cache)
    if not _free(dashboard_port):
        echo(f"port {dashboard_port} is busy; the dashboard gets a free one")
        dashboard_port = 0
    args = ["--data-dir", str(data_dir), "--port", "0", "--dashboard-port", str(dashboard_port),
            "--histogram-cache", str(cache)]
    if mongo_url:
        args += ["--mongo-url", mongo_url]
    log_path = workdir / "pipeline.log"
    echo(f"starting the pipeline in {data_dir} (stage output in {log_path})")
    with open(log_path, "a") as log:
        running = start_pipeline(args, stderr=log, new_session=True)
    urls = running.urls
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    pings = fleet_pings(seed=DEMO_SEED, scenario=DEMO_SCENARIO)
    traffic = SteadyTraffic(urls["receiver"], pings, rate=rate, batch_size=max(1, int(rate)),
                            connections=4).start()
    if "api" in urls:
        echo(f"dashboard: {urls['api']}/   (metrics: {urls['api']}/metrics)")
    else:
        echo("no dashboard in this installation (telemetry dashboard); "
             "watch the stages below or with `telemetry pipeline status`")
    echo(f"posting {rate:g} simulated pings/s into {urls['receiver']}; Ctrl-C stops and drains")
    echo("the fleet: " + "; ".join(line.strip() for line in _describe(DEMO_SCENARIO)))
    started = time.monotonic()
    if seconds is not None:
        status_every = min(status_every, seconds)
    try:
        while not stop.wait(status_every):
            if running.process.poll() is not None:
                break
            echo(f"-- {traffic.acked} pings acknowledged so far")
            for line in status_lines(pipeline_health(data_dir)):
                echo(line)
            if seconds is not None and time.monotonic() - started >= seconds:
                break
    finally:
        traffic.stop()
        for s, h in old.items():
            signal.signal(s, h)
        echo(f"stopping: {traffic.acked} pings acknowledged; draining the pipeline")
        code = running.stop(timeout=None)
    echo(f"pipeline exited with code {code}; everything is under {data_dir}")
    return code
