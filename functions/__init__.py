"""Ready-to-deploy bucket-event handlers: AWS Lambda, Google Cloud Functions, Azure Functions.

Each handler imports only its own cloud's function runtime and hands the provider payload to
:mod:`syncd.events.delivery` (``SYNCD_API_URL`` + ``SYNCD_API_TOKEN``, or ``SYNCD_DB``).
"""
