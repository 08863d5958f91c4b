"""``python -m deploy <command>``: the same as ``mvs <command>``."""

from deploy.cli import main

if __name__ == "__main__":
    main()
