"""``python -m probe``: the same as the ``probe`` command."""

from .cli import main

if __name__ == "__main__":
    main()
