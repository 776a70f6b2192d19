"""Words for counts in messages and descriptions, shared by the package and its grader."""


def counted(n: int, noun: str, plural: str = "") -> str:
    """"1 page", "3 pages": a count and its noun, in the singular for one (`plural`: the
    noun's plural where it is not noun + "s", "entries")."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
