"""The configuration side: scenario files, durations, precedence, thresholds, database URLs.

Nothing heavy: this package imports only the schema, the errors and its own small libraries
(tomllib, python-dotenv), so that list, show and validate answer at once.
"""
