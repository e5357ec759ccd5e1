"""The number of records the filter selects."""


def map(key, dims, value, context):
    context.write("total", 1)


def combine(key, values, context):
    context.write(key, sum(values))


def reduce(key, values, context):
    context.write(key, sum(values))
