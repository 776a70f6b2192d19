"""cuda_text.any_word: the one pattern of "any of these names, as a whole word" that the
source checks (constant_decl, source, compile_errors, source_macros, source_barriers) share."""
import re

from pagedattn_lab.cuda_text import any_word


def test_any_word_matches_whole_words_only_the_longer_name_too():
    found = re.findall(any_word({"LOG", "LOGGER"}), "LOGGER(x); LOG(y); LOGS(z); xLOG(w)")
    assert found == ["LOGGER", "LOG"]


def test_any_word_escapes_the_names():
    assert re.search(any_word({"a.b"}), "a.b") is not None
    assert re.search(any_word({"a.b"}), "axb") is None


def test_any_word_captures_the_name_as_group_one_unless_told_not_to():
    m = re.search(any_word({"__constant__", "CMEM"}) + r"\s+float\s+(\w+)", "CMEM float t;")
    assert (m.group(1), m.group(2)) == ("CMEM", "t")
    bare = re.compile(any_word({"__constant__", "CMEM"}, capture=False) + r"\s+float\s+(\w+)")
    assert bare.groups == 1 and bare.search("CMEM float t;").group(1) == "t"
