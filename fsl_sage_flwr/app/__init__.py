"""Flower app entry points: server and client apps, algorithm registry, settings, round recording."""
