"""``flock-anycast``: a chained CNI plugin that puts anycast addresses on a pod's ``lo``.

The runtime execs it once per verb, so start-up is latency: modules import
pydantic and pyroute2 only on the verbs that need them.
"""
