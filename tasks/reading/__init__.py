"""Reading returns: spreadsheet readers, extraction, numbers, parsing in workers, spam checks."""
