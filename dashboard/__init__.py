"""The aggregates API server and the dashboard page it serves."""
