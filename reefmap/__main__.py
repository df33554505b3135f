from reefmap.cli.main import main

raise SystemExit(main())
