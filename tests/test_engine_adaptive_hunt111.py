"""Hunt 111: `tail_waste` in closed form: the same share as counting every length, and right
for lengths whose int64 sums overflowed (a wrong share, silently) or whose arrays of every
length took terabytes."""
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from pagedattn_lab.engine.adaptive import choose_page_size, tail_waste


def counted(prompts, outputs, page_size):
    """Every step of every request, one by one, as exact fractions."""
    held = tokens = 0
    for p, o in zip(prompts, outputs):
        for length in range(p, p + o + 1):
            held += -(-length // page_size) * page_size
            tokens += length
    return Fraction(held - tokens, held)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(0, 40)), min_size=1, max_size=5),
       st.integers(1, 17))
def test_tail_waste_equals_counting_every_length(requests, page_size):
    prompts, outputs = zip(*requests)
    assert tail_waste(list(prompts), list(outputs), page_size) == float(
        counted(prompts, outputs, page_size))


def test_tail_waste_of_lengths_past_int64_sums():
    # (was 0.5: four lengths near 2**62 summed past 2**63)
    p, ps = 2**62, 4
    waste = Fraction(0 + 3 + 2 + 1, 4 * p + 3 * 4)
    assert tail_waste([p], [3], ps) == float(waste)


def test_tail_waste_of_a_long_output_takes_no_array_of_every_length():
    # (was a MemoryError: an int64 array of 2**40 lengths, 8 TiB)
    p, o, ps = 3, 2**40, 4
    # lengths 3 .. 3 + 2**40: residues mod 4 run 3, 0, 1, 2, ... 2**38 times round, plus the
    # first 3 once more; a length of residue 0, 1, 2, 3 leaves 0, 3, 2, 1 slots empty
    k = 2**38
    empty, tokens = 6 * k + 1, (o + 1) * (2 * p + o) // 2
    assert tail_waste([p], [o], ps) == float(Fraction(empty, empty + tokens))
    assert choose_page_size([p], [o], candidates=[4, 8])[0] == 8
