"""Test helpers shared by unit, property and crash tests.

Layout: ``ref_book`` (a slow, obviously correct reference model of the
matcher), ``ladder`` (draw a book as text, apply commands with consecutive
sequence numbers). Test code only: nothing under ``engine/`` may import this.
"""
