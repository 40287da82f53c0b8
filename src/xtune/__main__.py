"""`python -m xtune` is the `tune` command."""

from xtune.cli import main

if __name__ == "__main__":
    main()
