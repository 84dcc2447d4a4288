"""Agents the recipes train: Dreamer's actor-critic in imagination (:mod:`recipes.agents.dreamer_ac`) and
SAC (:mod:`recipes.agents.sac`)."""
