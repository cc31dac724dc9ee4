"""`python -m edgeq …`, which is also how torchrun starts it: torchrun -m edgeq export --method qat …"""

from edgeq.cli import main

main()
