"""Receiver: the HTTP service that accepts submissions and writes the raw log."""
