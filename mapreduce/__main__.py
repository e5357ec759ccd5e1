"""``python -m mapreduce``: the same as ``python -m mapreduce.job``."""

from mapreduce.job import main

main()
