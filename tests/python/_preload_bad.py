"""A module for preload= tests that fails to import."""
raise ValueError("_preload_bad refuses to be imported")
