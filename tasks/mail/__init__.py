"""Mail: messages and their MIME, mailers, guarded delivery, the notices, the request workbook."""
