"""DEPRECATED, to be removed once runner.py imports lib.serving.app / lib.serving.settings.

The service now lives in the modules listed in lib/serving/__init__.py. This module only
re-exports the two entry points runner.py's `serve` command uses.
"""

from lib.serving.app import create_app, serve
from lib.serving.settings import ServingSettings

__all__ = ["ServingSettings", "create_app", "serve"]
