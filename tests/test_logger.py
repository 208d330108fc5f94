"""Logging and progress bars (utils/logger.py): one console format; progress bars only on a terminal unless
SAS_PROGRESS says otherwise, never on other ranks (issue 21.5)."""
import io
import sys

from utils.logger import LOG_FORMAT, progress_bar, progress_enabled, setup_console_logging


def test_console_logging_uses_the_one_format():
    logger = setup_console_logging()
    handlers = [h for h in logger.handlers if getattr(h, "_sas_handler", False)]
    assert handlers and all(h.formatter._fmt == LOG_FORMAT for h in handlers)


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_bars_only_on_a_terminal_unless_sas_progress_says(monkeypatch):
    monkeypatch.delenv("SAS_PROGRESS", raising=False)
    assert progress_enabled(_Stream(True)) and not progress_enabled(_Stream(False))
    monkeypatch.setenv("SAS_PROGRESS", "0")
    assert not progress_enabled(_Stream(True))
    monkeypatch.setenv("SAS_PROGRESS", "1")
    assert progress_enabled(_Stream(False))
    monkeypatch.setattr(sys, "stderr", _Stream(False))
    monkeypatch.delenv("SAS_PROGRESS")
    assert progress_bar(range(3), desc="x").disable
    monkeypatch.setenv("SAS_PROGRESS", "1")
    assert not progress_bar(range(3), desc="x").disable
    assert progress_bar(range(3), desc="x", enabled=False).disable   # other ranks never
