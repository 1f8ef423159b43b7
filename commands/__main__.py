"""python -m commands"""

from commands.main import main

raise SystemExit(main())
