from ms2dist.cli import main

raise SystemExit(main())
