"""The data-plane engine.

Job spec, runner, manifests, claims, lease, commit, retries, webhooks: every
bucket write a job makes happens here.
"""
