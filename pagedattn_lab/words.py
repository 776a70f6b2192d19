"""Words for counts in messages and descriptions, shared by the package and its grader."""


def counted(n: int, noun: str) -> str:
    """"1 page", "3 pages": a count and its noun, in the singular for one."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
