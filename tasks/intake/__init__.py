"""Taking returns in: the drop folder, the mailbox (IMAP, Maildir), the archive, attachments."""
