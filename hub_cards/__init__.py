"""Model-card templates, one per model type (`<model_type>.md`), filled in by `avemotion.training.hub` when a model
is saved or pushed.

This folder is installed as the package `avemotion.hub_cards` (setup.cfg maps it), so that the templates are found
through `importlib.resources.files("avemotion.hub_cards")` in an installed wheel as in a source checkout.
"""
