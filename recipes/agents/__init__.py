"""Agents the recipes train: Dreamer's actor-critic in imagination (``recipes.agents.dreamer_ac``) and
SAC (``recipes.agents.sac``)."""
