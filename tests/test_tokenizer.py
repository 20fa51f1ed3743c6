import pytest

from lora_teach.data import CORPORA, load_corpus
from lora_teach.tokenizer import VOCAB, CharTokenizer


def test_round_trip():
    tok = CharTokenizer()
    text = "It is a truth universally acknowledged, £5!\nO Romeo?"
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.decode(tok.tensor(text)) == text


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_vocabulary_covers_every_shipped_corpus(name):
    assert set(load_corpus(name)) <= set(VOCAB)


def test_unknown_character_is_named():
    with pytest.raises(ValueError, match="é"):
        CharTokenizer().encode("café")


def test_out_of_range_ids_are_refused():
    with pytest.raises(ValueError, match="outside 0..96"):
        CharTokenizer().decode([3, 500])
