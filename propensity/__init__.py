"""propensity: real-time purchase-intent scoring for e-commerce.

This package holds what every part shares: settings, the event contract, AWS and Kinesis
helpers, the embedded local stack, replay and the command line. The streaming job, the daily
batch and the scorer live in the top-level packages `streaming`, `batch` and `serving`.
"""
