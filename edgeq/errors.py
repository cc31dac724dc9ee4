"""The one exception type for user errors: its message is what the CLI prints, as one line."""


class EdgeqError(Exception):
    """Bad input or an unsupported model: the message names the problem and the fix."""

    def __init__(self, message: str) -> None:
        # One line, always: the CLI prints str(self) as the whole error report.
        super().__init__(" ".join(message.split()))


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (a library's may run to pages), or ""."""
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
