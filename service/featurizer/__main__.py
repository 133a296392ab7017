from featurizer.cli import main

raise SystemExit(main())
