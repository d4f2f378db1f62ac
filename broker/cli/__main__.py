"""`python -m broker.cli ...`: the `broker` console script without installing it."""

from broker.cli import main

main()
