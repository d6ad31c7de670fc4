"""Run the command line interface: ``python -m curvlab``."""

from curvlab.cli.app import main

if __name__ == "__main__":
    main()
