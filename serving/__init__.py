"""The scorer: an async FastAPI service returning purchase propensities from Feast features.

Not built yet (issue 6); the folder is reserved for it.
"""
