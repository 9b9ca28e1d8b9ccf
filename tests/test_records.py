"""Content hashes must never change: a workspace's hashes decide what a re-import skips."""
import hashlib
import json

from hypothesis import given, strategies as st

from labeling.records import canonical_json, content_hash

STANDARD = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                           "content": st.text()}), max_size=4)


nested_text = st.recursive(st.text(), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)


@given(st.one_of(st.text(), messages, nested_text))
def test_fast_canonical_json_equals_the_standard_encoder(obj):
    assert canonical_json(obj) == STANDARD.encode(obj).encode("utf-8", "surrogatepass")


def test_hashes_of_known_values_are_stable():
    # Written down when prefloop first stored hashes; changing them would re-import every file.
    assert content_hash("hi") == hashlib.sha256(b'"hi"').hexdigest()
    assert content_hash([{"role": "user", "content": "é\n\x01"}]) == hashlib.sha256(
        '[{"content":"é\\n\\u0001","role":"user"}]'.encode()).hexdigest()


def test_long_integers_in_a_jsonl_line_stay_exact(tmp_path):
    from labeling.readers import _jsonl_rows

    path = tmp_path / "big.jsonl"
    path.write_text('{"n": 123456789012345678901234567890, "m": 12}\n', encoding="utf-8")
    (_, row), = _jsonl_rows(path)
    assert row == {"n": 123456789012345678901234567890, "m": 12}


def test_what_orjson_refuses_goes_through_the_standard_encoder():
    assert canonical_json("\ud800") == b'"\xed\xa0\x80"'
    assert canonical_json([2 ** 70]) == b"[1180591620717411303424]"
