"""The embedded executor: local worker processes and the watch loop."""
