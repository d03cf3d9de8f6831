"""Deciding on returns: validation, processing, coordinators' review, completeness, reminders, what the ledger owes."""
