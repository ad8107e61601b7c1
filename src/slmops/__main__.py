"""``python -m slmops`` runs the CLI."""

from slmops.cli.main import main

if __name__ == "__main__":
    main()
