"""The input file: its format, the two id columns, and tidying the ids (polars)."""
