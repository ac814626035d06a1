"""The payments app of the example shop."""
