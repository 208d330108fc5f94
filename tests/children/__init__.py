"""Child processes that tests start and then signal, kill or measure (run with ``python -m tests.children.<name>``
or ``python tests/children/<name>.py``); not tests themselves."""
