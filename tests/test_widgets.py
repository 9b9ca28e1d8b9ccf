"""The form every round's config gets (pages/widgets.config_form), in AppTest: the settings people
change first, the rest folded under "Advanced", and the values of both sides submitted."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from training.config_fields import form_fields

BASIC = {  # what the Train form shows unfolded, per round
    ("training.dpo_config", "DPORoundConfig"): ["beta", "loss_type", "learning_rate", "epochs"],
    ("training.reward_config", "RewardRoundConfig"): ["backbone", "method", "length"],
    ("training.ppo_config", "PPOConfig"): ["learning_rate", "steps", "beta"],
}


def form_page(module: str, class_name: str) -> None:
    import importlib

    import streamlit as st

    from pages.widgets import config_form

    config = config_form(getattr(importlib.import_module(module), class_name), "f", "Go")
    if config is not None:
        st.session_state["submitted"] = config


def labels(where) -> list[str]:
    return [w.label for kind in ("number_input", "selectbox", "checkbox", "text_input") for w in getattr(where, kind)]


@pytest.mark.parametrize("module, class_name", list(BASIC))
def test_basic_settings_come_first_and_the_rest_fold_under_advanced(module, class_name):
    at = AppTest.from_function(form_page, args=(module, class_name), default_timeout=30).run()
    assert not at.exception
    (advanced,) = at.expander
    assert advanced.label == "Advanced"
    config_class = getattr(__import__(module, fromlist=[class_name]), class_name)
    fields = [f.name.replace("_", " ") for f in form_fields(config_class)]
    folded = labels(advanced)
    shown = [name for name in labels(at) if name not in folded]
    assert sorted(shown) == sorted(n.replace("_", " ") for n in BASIC[(module, class_name)])
    assert sorted(shown + folded) == sorted(fields)  # every field once, on one side or the other


def test_values_on_both_sides_of_the_fold_are_submitted():
    at = AppTest.from_function(form_page, args=("training.dpo_config", "DPORoundConfig"), default_timeout=30).run()
    at.number_input(key="f-beta").set_value(0.25)
    at.expander[0].number_input(key="f-lora_r").set_value(4)
    at.button(key="FormSubmitter:f-Go").click().run()
    config = at.session_state["submitted"]
    assert (config.beta, config.lora_r, config.loss_type) == (0.25, 4, "sigmoid")


def test_a_config_without_basic_settings_shows_every_field_unfolded():
    at = AppTest.from_function(form_page, args=("training.evaluate_config", "EvaluateConfig"),
                               default_timeout=30).run()
    assert not at.expander
    assert "prompts" in labels(at) and "batch size" in labels(at)


def test_the_defaults_are_unchanged_by_the_basic_marks():
    from training.dpo_config import DPORoundConfig
    from training.ppo_config import PPOConfig
    from training.reward_config import RewardRoundConfig

    assert (DPORoundConfig().beta, DPORoundConfig().learning_rate, DPORoundConfig().epochs) == (0.1, 5e-4, None)
    assert (RewardRoundConfig().backbone, RewardRoundConfig().method, RewardRoundConfig().epochs) == ("policy", "heads", 1.5)
    assert (PPOConfig().steps, PPOConfig().beta, PPOConfig().learning_rate) == (20, 0.05, 3e-4)


def test_streamlit_toolbar_shows_no_deploy_button_or_developer_menu():
    import tomllib
    from pathlib import Path

    config = tomllib.loads((Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml").read_text())
    assert config["client"]["toolbarMode"] == "viewer"
