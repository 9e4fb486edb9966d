"""mailsync: mail sync and backup between IMAP, POP, Exchange, Maildir and mbox."""

__version__ = "0.1.0"
