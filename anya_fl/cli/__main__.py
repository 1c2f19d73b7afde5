"""`python -m anya_fl.cli`: the same as the `anya-fl` console script."""

from anya_fl.cli import main

main()
