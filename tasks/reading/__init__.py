"""Reading returns: spreadsheet readers, extraction, numbers, photos, parsing in workers, spam
checks."""
