"""MapReduce: runs the original job-script API on local processes or on Dask."""
