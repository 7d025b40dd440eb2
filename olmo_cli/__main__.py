"""`python -m olmo_cli ...` (what torchrun launches)."""

from olmo_cli.app import main

if __name__ == "__main__":
    main()
