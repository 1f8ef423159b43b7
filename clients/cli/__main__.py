"""python -m clients.cli"""

from clients.cli.main import main

raise SystemExit(main())
