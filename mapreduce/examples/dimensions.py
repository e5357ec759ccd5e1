"""Records per dimension combination, read from the layout path without parsing payloads."""


def map(key, dims, value, context):
    context.write("/".join(dims), 1)


def combine(key, values, context):
    context.write(key, sum(values))


def reduce(key, values, context):
    context.write(key, sum(values))
