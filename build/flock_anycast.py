"""Entry script PyInstaller freezes into ``flock-anycast``: the console script's ``main``."""

from cni_plugin.main import main

raise SystemExit(main())
