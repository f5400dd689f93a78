"""Forgetting a shopper (GDPR article 17): `propensity forget --user USER_ID` removes their
events, archived features, quarantined input, online entities and logged predictions, and
records what it removed (counts, never the data). A job on floor 3 of the package
(propensity/__init__.py): it imports the core and Feast's definitions only.

- forget.py    what holds a shopper, each place rewritten without them, and the audit record
"""
