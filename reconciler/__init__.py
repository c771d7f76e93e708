"""flock-reconciler: committed allocations of Ready pods become host routes and BGP exports.

Pure computation and effectful adapters live in separate modules:

- ``desired`` — pure: allocations x readiness -> wanted routes; diff and drain planning.
- ``kernel`` — effectful: host routes of our protocol over rtnetlink (netns sockets via pyroute2).
- ``readiness`` — effectful: readiness sources (``always``, ``file``); ``kubernetes_source`` the ``kubernetes`` one.
- ``watch`` — effectful: inotify on a directory, netlink route events; they only wake the loop.
- ``loop`` — orchestration: one pass = observe, plan, apply in the safe order; the scheduler.
- ``metrics``, ``logs``, ``endpoints`` — Prometheus metrics, key=value logs, /metrics /healthz /readyz.
- ``main`` — the process: config, logging, signals, HTTP endpoints.
- ``bird``, ``bird_render``, ``bird_control`` — the BIRD adapter (rendering + control socket).
- ``node_config`` — pure: the node configuration file, parsed and validated.

Importing this package has no side effects and imports no submodule.
"""
