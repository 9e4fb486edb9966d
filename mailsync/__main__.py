"""`python -m mailsync`: the command line (mailsync.cli)."""

from mailsync.cli import main

main()
