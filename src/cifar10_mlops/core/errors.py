"""The one exception type a stage turns into a one-line message and a non-zero exit."""


class PipelineError(Exception):
    """A problem the user can fix: bad input data, a bad source, bad params."""


class ConfigError(PipelineError):
    """params.yaml has an unknown key, a wrong type or an out-of-range value."""
