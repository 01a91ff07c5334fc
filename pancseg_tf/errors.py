"""The one exception type that the `pancseg` command turns into a one-line error."""


class PancsegError(ValueError):
    """A problem with the user's input (file, folder, option, configuration).

    The command line prints it as ``pancseg: error: <message>`` and exits with status 2.
    Messages say what was received and what was expected, and never contain a patient
    identifier (name, ID, birth date, institution, study date, accession number).
    """
