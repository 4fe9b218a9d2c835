import pytest

from e5.registry import DEFAULT_MODEL, MODELS, Family, Pooling, PromptStyle, UnknownModelError, get_spec

# The table of the model cards: (family, dimensions, max tokens, prompt style, pooling).
EXPECTED = {
    "e5-small-v2": (Family.BERT, 384, 512, PromptStyle.PREFIX, Pooling.MEAN),
    "e5-base-v2": (Family.BERT, 768, 512, PromptStyle.PREFIX, Pooling.MEAN),
    "e5-large-v2": (Family.BERT, 1024, 512, PromptStyle.PREFIX, Pooling.MEAN),
    "multilingual-e5-small": (Family.XLM_ROBERTA, 384, 512, PromptStyle.PREFIX, Pooling.MEAN),
    "multilingual-e5-base": (Family.XLM_ROBERTA, 768, 512, PromptStyle.PREFIX, Pooling.MEAN),
    "multilingual-e5-large": (Family.XLM_ROBERTA, 1024, 512, PromptStyle.PREFIX, Pooling.MEAN),
    "multilingual-e5-large-instruct": (Family.XLM_ROBERTA, 1024, 512, PromptStyle.INSTRUCT, Pooling.MEAN),
    "e5-mistral-7b-instruct": (Family.MISTRAL, 4096, 4096, PromptStyle.INSTRUCT, Pooling.LAST_TOKEN),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_every_e5_checkpoint_is_registered_as_its_model_card_says(name):
    spec = get_spec(name)
    assert (spec.family, spec.dimensions, spec.max_tokens, spec.prompt_style, spec.pooling) == EXPECTED[name]
    assert spec.hf_id == f"intfloat/{name}"
    assert not spec.demo


def test_only_e5_mistral_appends_eos():
    assert [s.name for s in MODELS.values() if s.append_eos] == ["e5-mistral-7b-instruct"]


def test_the_demo_is_the_only_non_e5_entry_and_is_labelled():
    extra = set(MODELS) - set(EXPECTED)
    assert extra == {"demo-all-minilm-l6-v2"}
    assert MODELS["demo-all-minilm-l6-v2"].demo


def test_default_model_is_multilingual_e5_small():
    assert DEFAULT_MODEL == "multilingual-e5-small"


def test_unknown_model_names_the_choices():
    with pytest.raises(UnknownModelError, match="unknown model 'e5-huge'.*e5-small-v2"):
        get_spec("e5-huge")
