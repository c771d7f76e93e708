"""Building blocks for labs in network namespaces, shared by tests, benchmarks and `make demo`.

Everything here creates namespaces and processes of its own and removes
them again; nothing touches the root namespace's links, routes or sysctls.
"""
