"""Real and in-process peers the tests run the workers against."""
