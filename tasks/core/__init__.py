"""Configuration, settings, the ledger and its schema, the schedule, the unit directory, the
rendering environment, durable files, label normalisation, fault-injection points."""
