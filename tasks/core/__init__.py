"""Configuration, settings, the ledger and its schema, the schedule, the rendering environment, durable files, label normalisation."""
