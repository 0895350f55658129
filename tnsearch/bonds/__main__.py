"""`python -m tnsearch.bonds trial=N layer=NAME bond=K`: the bond probe command.

`tnsearch.bonds` is pure PyTorch; this entry point is a command (the top layer of the contracts
in pyproject.toml) and only hands over to `tnsearch.probe`, which is where the command lives.
Importing `tnsearch.bonds` never imports it.
"""

from tnsearch.probe import main

if __name__ == "__main__":
    main()
