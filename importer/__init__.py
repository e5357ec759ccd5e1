"""Importer: loads a layout dataset into MongoDB."""
