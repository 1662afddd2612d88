"""A run: its lifecycle, tasks, signals and progress, and each row's attempts."""
