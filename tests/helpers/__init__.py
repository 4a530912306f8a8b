"""Helpers shared by test files (import as helpers.<module>; pytest puts tests/ on the path)."""
