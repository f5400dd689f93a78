"""The daily batch job: user and product aggregates with point-in-time snapshots, into Feast.

Not built yet (issue 4); the folder is reserved for it.
"""
