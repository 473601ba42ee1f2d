"""Helpers and fixture bodies shared by several test modules.

A test module never imports from another test module (tests/test_architecture.py checks it): what
two of them share lives here, and the fixtures that use it live in tests/conftest.py.
"""
