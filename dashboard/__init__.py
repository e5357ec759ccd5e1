"""The HTTP service over the aggregates: telemetry.mozilla.org's JSON API (and, later, its pages)."""
