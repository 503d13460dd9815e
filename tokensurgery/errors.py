"""One exception type for problems the user can fix: the CLI prints it as a single line."""


class TokenSurgeryError(Exception):
    """Bad input or an unsupported case; the message names the problem and what to do."""
