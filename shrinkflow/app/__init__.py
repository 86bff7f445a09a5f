"""The applications: the command line, the benchmark, prediction, local servers."""
