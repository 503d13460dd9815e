"""`python -m tokensurgery.cli ...` (what torchrun runs): the same CLI as `tokensurgery`."""

from . import main

main()
