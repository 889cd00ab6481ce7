"""Watching the served model: the reference `evaluate` saves (reference), the tests of a window
of served images against it (drift), the command that runs them and its report (check,
report), and the shifted windows they are validated on (shifts)."""
