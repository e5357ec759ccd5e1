"""Aggregations: named MongoDB pipelines for the standard questions."""
