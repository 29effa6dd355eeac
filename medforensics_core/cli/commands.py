"""Imports every built-in command module so each registers itself on the ``mfx`` group."""

import importlib
import logging

for _module in ("plugins_cmd", "data_cmds", "demo_cmds", "run_cmds", "index_cmds"):
    try:
        importlib.import_module(f"{__package__}.{_module}")
    except ModuleNotFoundError as exc:  # a command module still being written must not break the others
        if exc.name != f"{__package__}.{_module}":
            raise
        logging.getLogger(__name__).debug("command module %s not present", _module)
