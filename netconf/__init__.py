"""Shared contract of flock: models, the error tree and the state store.

This layer does no netlink and starts no subprocess. The CNI plugin imports
it on every exec, so submodules are imported explicitly by their users and
this package imports nothing itself.
"""
