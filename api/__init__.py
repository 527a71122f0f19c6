"""The HTTP API: the front door for apps, beside the dataflow.

It reuses the job's models (pipeline.messages), topics (writes go to Kafka through
sinks.kafka's checked producer) and stores (PostgreSQL history, the Redis in-app feed). One
router per resource lives in api/routes/; authentication and roles in api/auth.py; errors are
RFC 9457 problem documents (api/problems.py). Nothing here imports bytewax.
"""
