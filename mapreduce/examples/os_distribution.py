"""Records per operating system: the original's first example, unchanged."""

import json


def map(k, d, v, cx):
    cx.write(json.loads(v)['info']['OS'], 1)


def reduce(k, v, cx):
    cx.write(k, sum(v))
