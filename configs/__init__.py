"""Hydra configs, installed as package data so the console scripts find them anywhere."""
