"""A simulated Firefox fleet: realistic classic pings at any volume.

Library use (the CLI is ``telemetry simulate``)::

    from fleet.population import Fleet
    from fleet.scenario import Scenario
    from fleet.rawlogs import write_raw_logs
    from fleet.sender import SendConfig, send

    fleet = Fleet(pings=200_000, seed=1, scenario=Scenario.load("s.json"))
    for path, body, timestamp_ms, client_ip in fleet.submissions():   # sub.malformed: None or how
        ...
    write_raw_logs(Fleet(10_000, seed=1).submissions(), "raw/")      # finished v2 raw logs
    send(Fleet(10_000, seed=1).submissions(), SendConfig("http://127.0.0.1:8080"))

See docs/fleet.md for the population, the effects and what the data shows.
"""
