"""The HTTP service over the aggregates: telemetry.mozilla.org's JSON API (later its pages)."""
