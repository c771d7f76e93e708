from cni_plugin.main import main

raise SystemExit(main())
