"""One rtnetlink transport for the plugin and the reconciler (``rtnetlink.transport``).

Empty on purpose: the plugin imports ``rtnetlink.transport`` on the verbs that
reach the kernel, and a package ``__init__`` would run on every one of them.
May: create and bind NETLINK_ROUTE sockets, exchange pyroute2 messages over
them. May not: import ``cni_plugin``, ``reconciler`` or ``netconf``, or know
what a request is for (the callers build requests and translate errors).
"""
