"""Every public name has a docstring with an example (scripts/api_docs.py builds the
API reference from them, and refuses to while one is missing)."""

import helpers


def load_script():
    return helpers.load_script("api_docs.py")


def test_every_public_name_has_a_docstring_with_an_example():
    api_docs = load_script()
    assert len(api_docs.modules()) > 30
    assert api_docs.problems() == []


def test_the_check_catches_a_name_without_a_docstring(monkeypatch):
    api_docs = load_script()
    import ice_tf.scores

    def undocumented(outputs):
        return outputs

    undocumented.__module__ = "ice_tf.scores"
    monkeypatch.setattr(ice_tf.scores, "undocumented", undocumented, raising=False)
    monkeypatch.setattr(ice_tf.scores, "__all__", [*ice_tf.scores.__all__, "undocumented"])
    assert api_docs.problems() == ["ice_tf.scores.undocumented: no docstring"]
