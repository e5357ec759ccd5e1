"""MapReduce job scripts, one per named pipeline, that answer the same question over a layout.

Each is an ordinary job script (``map``/``reduce`` of SPEC section 5) whose
only settings are the ``PARAMS = {...}`` statement at its top; ``telemetry
compare`` writes a copy with that statement replaced.  Keys are JSON objects of
the row's key columns, values JSON objects of the other columns, so every
output line ``key<TAB>value`` is one row of the matching pipeline.
"""
