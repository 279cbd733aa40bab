"""Data set formats, loaders and the preference-strength vocabulary."""
