"""Words for counts and index lists in messages and descriptions, shared by the package and
its grader."""


def counted(n: int, noun: str, plural: str = "") -> str:
    """"1 page", "3 pages": a count and its noun, in the singular for one (`plural`: the
    noun's plural where it is not noun + "s", "entries")."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def ranges(values) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    values = sorted(int(v) for v in values)
    if not values:
        return "none"
    parts, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)
