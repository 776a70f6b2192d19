"""The simulator's requests are compared by identity: lesson 00's four policies over 600
requests took 30 s when `req in running` compared every field of every running request
(13 million dataclass comparisons), 3 s by identity (the same figures: nbval holds lesson
00 to its stored output)."""
from pagedattn_lab import sim_memory


def test_a_request_is_itself_not_its_fields():
    a, b = sim_memory.Request(7, 10, 20), sim_memory.Request(7, 10, 20)
    assert a != b and a in [a] and b not in [a]

