"""Converter: validates payloads, converts them to the storage format and partitions them into the layout."""
