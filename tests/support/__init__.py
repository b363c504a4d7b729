"""Helpers shared by the tests: tiny data, tiny models, real projects and servers."""
