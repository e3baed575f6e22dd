import sys

from landscape_ray.cli.main import main

sys.exit(main())
