"""Deciding on returns: validation, decisions and their outcome, a coordinator's review,
completeness, reminders, what the ledger owes until it is sent."""
