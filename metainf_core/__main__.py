from metainf_core.cli import main

raise SystemExit(main())
