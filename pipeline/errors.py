"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class PipelineError(Exception):
    """A user-facing error: the message names the file and the field or line at fault."""

    def __init__(self, message, exit_code=2):
        super().__init__(message)
        self.exit_code = exit_code
