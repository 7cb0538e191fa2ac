"""The command line: serve, check, explain and the admin commands."""
