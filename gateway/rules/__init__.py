"""Local rules and upload filters."""
