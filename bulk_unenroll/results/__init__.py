"""The results file: its format (read and written in one place), the journal, the resume index."""
