"""The bulletin: compiling, its content, DOCX, exported tables, approval and sign-off by mail."""
