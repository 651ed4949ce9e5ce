"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class PipelineError(Exception):
    """A user-facing error: the message names the file and the field or line at fault."""

    def __init__(self, message, exit_code=2):
        super().__init__(message)
        self.exit_code = exit_code


class UserCodeError(PipelineError):
    """A task's own callable (its factory, evaluate, finetune ...) raised or returned nonsense. The
    CLI prints the user's traceback (`__cause__`), then this one line."""
