"""What a reload checks beyond the file itself: the new file against the one serving now.

A reload (SIGHUP, `POST /api/v1/reload`) reads the same path again. The new file must be
valid on its own, as at start (loads() with `serving`), and must not take away the admin
listener that serves now unless the operator forces it: the admin API is how a reload is
asked for, watched and undone, and a file cut short loses its [admin] section as easily as
its listeners.
"""

from __future__ import annotations

from proxyd.config.errors import ConfigError, ConfigErrors
from proxyd.config.load import loads
from proxyd.config.model import Config

FORCE_HINT = (
    'to remove it, POST /api/v1/reload with {"force": true}, or restart proxyd;'
    " SIGHUP cannot force it"
)


def reload_config(running: Config, text: str, force: bool = False) -> Config:
    """The Config a reload of `running` serves: `text`, the file at running.path read again.
    Raises ConfigErrors if it is not valid, or if it has no [admin] section while `running`
    has one and the reload is not forced."""
    config = loads(text, running.path, serving=True)
    errors = reload_errors(running, config, force)
    if errors:
        raise ConfigErrors(errors)
    return config


def reload_errors(running: Config, new: Config, force: bool = False) -> list[ConfigError]:
    """Why `new` may not replace `running` at a reload (`new` valid on its own)."""
    if running.admin is None or new.admin is not None or force:
        return []
    return [
        ConfigError(
            new.path,
            None,
            "[admin]",
            None,
            "an [admin] section: without one this reload would close the admin listener on"
            f" {running.admin.listen}, which only a forced reload does",
            "none",
            FORCE_HINT,
        )
    ]
