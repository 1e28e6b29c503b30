"""Decide per message (later per recipient) what each category means: the destinies."""
